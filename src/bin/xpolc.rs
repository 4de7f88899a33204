//! `xpolc`: compile xpol policies to BPF objects.
//!
//!   xpolc build POLICY [-o OUT.o] [--emit ast|ir|llvm|asm]
//!   xpolc check POLICY [--message-format human|json] [--kernel [--verbose] [--verifier-log FILE]]
//!   xpolc lsp
//!   xpolc completions SHELL | xpolc man [--out DIR]

mod common;
#[path = "xpolc/lsp.rs"]
mod lsp;

use anyhow::{Context, Result};
use common::{check_output, write_output};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use xpol_compiler::{Build, BuildOptions, Emit};

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
        policy: PathBuf,
        /// Output object (default: the policy's name with `.o`).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Print an intermediate form instead of writing the object.
        #[arg(long, value_enum)]
        emit: Option<EmitArg>,
        #[arg(long, value_enum, default_value = "human")]
        message_format: MessageFormat,
    },
    /// Check a policy without writing anything.
    Check {
        policy: PathBuf,
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
}

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

fn report(build: &Build, format: MessageFormat) {
    if build.diagnostics.is_empty() {
        return;
    }
    let text = match format {
        MessageFormat::Json => xpol_lang::render::render_json(&build.diagnostics, &build.sources),
        MessageFormat::Human => xpol_lang::render::render_human(&build.diagnostics, &build.sources, std::io::stderr().is_terminal()),
    };
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = writeln!(err);
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
        Command::Check { policy, message_format, kernel, verbose, verifier_log } => {
            let mut build = xpol_compiler::build(&policy, &BuildOptions::default());
            // Interfaces `redirect` names that this machine lacks: a
            // warning when only checking (the policy may be meant for
            // another machine), an error under `--kernel`, which checks
            // what would run here (the programs are still verified).
            let mut interfaces_missing = false;
            if let Some(out) = &build.output {
                let severity = if kernel { xpol_lang::Severity::Error } else { xpol_lang::Severity::Warning };
                let missing = xpol_compiler::check::lints::missing_interfaces(&out.ir, |name| xpol_runtime::sys::if_nametoindex(name) != 0, severity);
                interfaces_missing = missing.iter().any(|d| d.is_error());
                build.diagnostics.extend(missing);
            }
            if let (true, Some(path)) = (kernel, &verifier_log) {
                // Refused now rather than after a rejection, if ever.
                check_output(path, &input_paths(&build.sources))?;
            }
            if kernel {
                if let Some(out) = &build.output {
                    match xpol_runtime::loader::LoadedPolicy::load_with(&out.object, &xpol_runtime::loader::LoadOptions { missing_interfaces_ok: true, ..Default::default() }) {
                        Ok(mut loaded) => {
                            for p in out.meta.programs.clone() {
                                let s = loaded.program_stats(&p.hook)?;
                                eprintln!(
                                    "{}: verified by the kernel: {} instructions processed, {} instructions ({} bytes JIT-compiled)",
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
                            if let Some(path) = &verifier_log {
                                write_output(path, log.as_bytes(), &input_paths(&build.sources))?;
                                eprintln!("wrote the verifier's log of `{program}` to {}", path.display());
                            }
                            build.diagnostics.push(d);
                            build.output = None;
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
            report(&build, message_format);
            Ok(if build.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Build { policy, output, emit, message_format } => {
            let emit = emit.map(|e| match e {
                EmitArg::Ast => Emit::Ast,
                EmitArg::Ir => Emit::Ir,
                EmitArg::Llvm => Emit::Llvm,
                EmitArg::Asm => Emit::Asm,
            });
            let options = BuildOptions { text: matches!(emit, Some(Emit::Llvm | Emit::Asm)), ..BuildOptions::default() };
            let build = xpol_compiler::build(&policy, &options);
            report(&build, message_format);
            let Some(out) = &build.output else { return Ok(ExitCode::FAILURE) };
            if let Some(emit) = emit {
                let text = match emit {
                    Emit::Ast => format!("{:#?}\n", out.ast),
                    Emit::Ir => out.ir.to_string(),
                    Emit::Llvm => out.llvm_ir.clone(),
                    Emit::Asm => out.asm.clone(),
                };
                std::io::stdout().write_all(text.as_bytes())?;
                return Ok(ExitCode::SUCCESS);
            }
            let path = output.unwrap_or_else(|| policy.with_extension("o"));
            write_output(&path, &out.object, &input_paths(&build.sources))?;
            eprintln!(
                "wrote {} ({} rules, {} programs, {} bytes)",
                path.display(),
                out.meta.rules.len(),
                out.meta.programs.len(),
                out.object.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
