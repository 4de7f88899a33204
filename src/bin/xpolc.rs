//! `xpolc`: compile xpol policies to BPF objects.
//!
//!   xpolc build POLICY [-o OUT.o] [--emit ast|ir|llvm|asm] [--message-format human|json|sarif]
//!   xpolc check POLICY [--message-format human|json|sarif] [--exact] [--kernel [--verbose] [--verifier-log FILE]]
//!   xpolc diff OLD NEW [--json] [--rules] [--sets declared|symbolic]
//!   xpolc query POLICY 'PREDICATE' [--hook HOOK] [--json]
//!   xpolc lsp
//!   xpolc completions SHELL | xpolc man [--out DIR]
//!
//! POLICY `-` is standard input. Diagnostics for people go to stderr; in
//! JSON or SARIF to stdout, where nothing else is written (docs/json.md).

mod common;
#[path = "xpolc/analysis.rs"]
mod analysis;
#[path = "xpolc/lsp.rs"]
mod lsp;

use anyhow::{Context, Result};
use common::{check_output, write_output};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use xpol_compiler::{Build, BuildOptions, Emit};
use xpol_lang::{Diagnostic, SourceMap};

#[derive(Parser)]
#[command(name = "xpolc", version, about = "Compile xpol network policies to eBPF objects")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a policy to a BPF ELF object.
    Build {
        /// The policy file, or `-` for standard input (then `-o` is
        /// needed, unless `--emit`).
        policy: PathBuf,
        /// Output object (default: the policy's name with `.o`).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Print an intermediate form instead of writing the object (to
        /// stdout: human diagnostics only).
        #[arg(long, value_enum)]
        emit: Option<EmitArg>,
        /// Diagnostics for people (stderr), or JSON lines or SARIF 2.1.0
        /// (stdout, nothing else there).
        #[arg(long, value_enum, default_value = "human")]
        message_format: MessageFormat,
    },
    /// Check a policy without writing anything.
    Check {
        /// The policy file, or `-` for standard input (includes then
        /// relative to the current directory).
        policy: PathBuf,
        /// Diagnostics for people (stderr), or JSON lines or SARIF 2.1.0
        /// (stdout, nothing else there).
        #[arg(long, value_enum, default_value = "human")]
        message_format: MessageFormat,
        /// Also load every program into the kernel (verified, not attached)
        /// and report the verifier's statistics. Needs root.
        #[arg(long)]
        kernel: bool,
        /// With --kernel: add the verifier log lines that matter to a
        /// rejection's diagnostic.
        #[arg(long, requires = "kernel")]
        verbose: bool,
        /// With --kernel: when the kernel rejects a program, write the
        /// verifier's whole log to FILE.
        #[arg(long, value_name = "FILE", requires = "kernel")]
        verifier_log: Option<PathBuf>,
        /// Look for rules no packet reaches and rules that change nothing
        /// however large the policy (the analysis' own budget, not the
        /// small one of every check), and say where the search stops if
        /// it does (docs/analysis.md).
        #[arg(long)]
        exact: bool,
    },
    /// The packets two versions of a policy decide differently: regions
    /// over the fields the rules read, each with an example packet
    /// (docs/analysis.md). Exit status 0: no difference; 1: differences;
    /// 2: a policy does not check.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Also report packets decided by another rule with the same verdict.
        #[arg(long)]
        rules: bool,
        /// Sets the runtime may change (`set NAME`, `xpol set`): by their
        /// declared contents, or as unknown contents (the same in both
        /// versions), a difference that depends on them said so.
        #[arg(long, value_enum, default_value = "declared")]
        sets: analysis::SetsArg,
    },
    /// What packets satisfying a predicate can get: each verdict and rule,
    /// with an example packet, e.g. `xpolc query fw.xpol 'tcp.dport == 22
    /// && ip.src !in 198.51.100.0/24'`.
    Query {
        policy: PathBuf,
        /// A predicate in the language, as between `/.../`.
        predicate: String,
        /// The program to ask (default: the policy's first).
        #[arg(long)]
        hook: Option<String>,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Serve the Language Server Protocol on stdin/stdout, for editors:
    /// diagnostics as you type, hover, go-to-definition, completion.
    Lsp,
    /// Print a shell completion script on standard output, e.g.
    /// `xpolc completions bash > /usr/share/bash-completion/completions/xpolc`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page xpolc(1), or with --out write it and one page per
    /// subcommand (xpolc-build.1, ...) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum EmitArg {
    Ast,
    Ir,
    Llvm,
    Asm,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MessageFormat {
    Human,
    Json,
    Sarif,
}

/// The policy argument that means standard input.
const STDIN: &str = "-";

fn main() -> ExitCode {
    xpol_runtime::sys::default_sigpipe();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_policy(policy: &Path, options: &BuildOptions) -> Build {
    if policy == Path::new(STDIN) {
        xpol_compiler::build_stdin(std::io::stdin().lock(), options)
    } else {
        xpol_compiler::build(policy, options)
    }
}

/// Writes the diagnostics: for people on stderr; as JSON lines closed by
/// a summary record, or as one SARIF log, on stdout, where nothing else
/// is written. `success`: the command did what it was asked.
fn report(diags: &[Diagnostic], sources: &SourceMap, format: MessageFormat, success: bool) -> Result<()> {
    use xpol_lang::render;
    if format == MessageFormat::Human {
        if !diags.is_empty() {
            let text = render::render_human(diags, sources, std::io::stderr().is_terminal());
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            if !text.ends_with('\n') {
                let _ = writeln!(err);
            }
        }
        return Ok(());
    }
    let text = match format {
        MessageFormat::Json => render::render_json(diags, sources) + &render::render_json_summary(diags, sources, success),
        // A fatal error of the command itself is the one thing that makes
        // the run unsuccessful in SARIF's terms; a policy with errors is a
        // run that did its job.
        _ => render::render_sarif(diags, sources, env!("CARGO_PKG_VERSION"), !diags.iter().any(|d| d.code == FATAL)),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("writing the diagnostics to stdout")
}

/// The code of a command's own failure (an output it cannot write, a
/// kernel it cannot load into) in JSON and SARIF, where it is one more
/// diagnostic, without a place, so that the stream still ends as it
/// should.
const FATAL: &str = "xpol::cli";

/// Reports a build's diagnostics and the command's own failure, if any,
/// and gives the exit status: in JSON and SARIF the failure is one more
/// diagnostic ([`FATAL`]); for people it follows the diagnostics on
/// stderr (from `main`).
fn finish(mut build: Build, format: MessageFormat, fatal: Result<()>) -> Result<ExitCode> {
    let fatal = match (fatal, format) {
        (Ok(()), _) => None,
        (Err(e), MessageFormat::Human) => Some(e),
        (Err(e), _) => {
            build.diagnostics.push(Diagnostic::error(FATAL, format!("{e:#}")));
            build.output = None;
            None
        }
    };
    let success = !build.failed() && fatal.is_none();
    report(&build.diagnostics, &build.sources, format, success)?;
    match fatal {
        Some(e) => Err(e),
        None => Ok(if success { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
    }
}

/// The files a build read, which its outputs must not overwrite.
fn input_paths(sources: &xpol_lang::SourceMap) -> Vec<&std::path::Path> {
    sources.files().filter_map(|(_, f)| f.path.as_deref()).collect()
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Completions { shell } => common::generate::completions(Cli::command(), shell).map(|()| ExitCode::SUCCESS),
        Command::Man { out } => common::generate::man(Cli::command(), "1", out.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::Lsp => {
            lsp::run()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff { old, new, json, rules, sets } => analysis::diff(&old, &new, json, rules, sets),
        Command::Query { policy, predicate, hook, json } => analysis::query(&policy, &predicate, hook.as_deref(), json),
        Command::Check { policy, message_format, kernel, verbose, verifier_log, exact } => {
            let mut build = build_policy(&policy, &BuildOptions::default());
            if exact {
                analysis::exact_lints(&mut build);
            }
            let checked = check_here(&mut build, kernel, verbose, verifier_log.as_deref());
            finish(build, message_format, checked)
        }
        Command::Build { policy, output, emit, message_format } => {
            if emit.is_some() && message_format != MessageFormat::Human {
                anyhow::bail!("--emit prints to stdout, where --message-format json or sarif writes the diagnostics: use one or the other");
            }
            let stdin = policy == Path::new(STDIN);
            if stdin && output.is_none() && emit.is_none() {
                anyhow::bail!("with the policy from standard input, name the object with -o");
            }
            let emit = emit.map(|e| match e {
                EmitArg::Ast => Emit::Ast,
                EmitArg::Ir => Emit::Ir,
                EmitArg::Llvm => Emit::Llvm,
                EmitArg::Asm => Emit::Asm,
            });
            let options = BuildOptions { text: matches!(emit, Some(Emit::Llvm | Emit::Asm)), ..BuildOptions::default() };
            let build = build_policy(&policy, &options);
            let path = output.unwrap_or_else(|| policy.with_extension("o"));
            // The object first, so that a failure to write it is reported
            // with the diagnostics (in JSON, before the summary).
            let written = match (&build.output, emit) {
                (Some(out), None) => write_output(&path, &out.object, &input_paths(&build.sources)).map(|()| {
                    Some(format!("wrote {} ({} rules, {} programs, {} bytes)", path.display(), out.meta.rules.len(), out.meta.programs.len(), out.object.len()))
                }),
                _ => Ok(None),
            };
            let (done, written) = match written {
                Ok(w) => (Ok(()), w),
                Err(e) => (Err(e), None),
            };
            let text = match (&build.output, emit) {
                (Some(out), Some(emit)) => Some(match emit {
                    Emit::Ast => format!("{:#?}\n", out.ast),
                    Emit::Ir => out.ir.to_string(),
                    Emit::Llvm => out.llvm_ir.clone(),
                    Emit::Asm => out.asm.clone(),
                }),
                _ => None,
            };
            let code = finish(build, message_format, done)?;
            if let Some(text) = text {
                std::io::stdout().write_all(text.as_bytes())?;
            }
            if let Some(line) = written {
                eprintln!("{line}");
            }
            Ok(code)
        }
    }
}

/// What `check` adds to a build: the interfaces `redirect` names, and with
/// `kernel`, every program loaded into the kernel (verified, not
/// attached). A rejection becomes a diagnostic; `Err` is the command's own
/// failure (an unwritable log, a kernel it cannot load into).
fn check_here(build: &mut Build, kernel: bool, verbose: bool, verifier_log: Option<&Path>) -> Result<()> {
    // Interfaces `redirect` names that this machine lacks: a warning when
    // only checking (the policy may be meant for another machine), an
    // error under `--kernel`, which checks what would run here (the
    // programs are still verified).
    let mut interfaces_missing = false;
    if let Some(out) = &build.output {
        let severity = if kernel { xpol_lang::Severity::Error } else { xpol_lang::Severity::Warning };
        let missing = xpol_compiler::check::lints::missing_interfaces(&out.ir, |name| xpol_runtime::sys::if_nametoindex(name) != 0, severity);
        interfaces_missing = missing.iter().any(|d| d.is_error());
        build.diagnostics.extend(missing);
    }
    if let (true, Some(path)) = (kernel, verifier_log) {
        // Refused now rather than after a rejection, if ever.
        check_output(path, &input_paths(&build.sources))?;
    }
    if kernel {
        if let Some(out) = &build.output {
            match xpol_runtime::loader::LoadedPolicy::load_with(&out.object, &xpol_runtime::loader::LoadOptions { missing_interfaces_ok: true, ..Default::default() }) {
                Ok(mut loaded) => {
                    let estimates = xpol_compiler::codegen::processed_estimates(&out.ir);
                    for p in out.meta.programs.clone() {
                        let s = loaded.program_stats(&p.hook)?;
                        let estimate = estimates.iter().find(|(h, _)| h.as_str() == p.hook).map_or(0, |(_, n)| *n);
                        eprintln!(
                            "{}: verified by the kernel: {} instructions processed (estimated before loading: {estimate}), {} instructions ({} bytes JIT-compiled)",
                            p.hook,
                            s.verified_insns,
                            s.xlated_bytes / 8,
                            s.jited_bytes
                        );
                    }
                }
                Err(xpol_runtime::loader::RuntimeError::Verifier { program, log, .. }) => {
                    let section = out.meta.programs.iter().find(|p| p.name == program).map(|p| p.section.clone()).unwrap_or_default();
                    let d = xpol_compiler::verifier::explain(&program, &section, &log, &out.object, &out.located, &build.sources, verbose);
                    build.diagnostics.push(d);
                    build.output = None;
                    if let Some(path) = verifier_log {
                        write_output(path, log.as_bytes(), &input_paths(&build.sources))?;
                        eprintln!("wrote the verifier's log of `{program}` to {}", path.display());
                    }
                }
                Err(xpol_runtime::loader::RuntimeError::Map { map, source }) => {
                    build.diagnostics.push(xpol_compiler::verifier::explain_map(&map, &source, out));
                    build.output = None;
                }
                Err(e) => return Err(e).context("loading the policy into the kernel"),
            }
        }
    }
    if interfaces_missing {
        build.output = None;
    }
    Ok(())
}
