//! Log records on the command line: `xpol run` shows those of the policy
//! it attached, `xpol log NAME` follows an applied policy's (across its
//! replacements); `--pcap-out FILE` writes the logged packets as pcap.
//! Reading and decoding is `xpol_runtime::log`'s; this is where they go.

use super::common::StreamOutput;
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xpol_runtime::log::{Entry, Interfaces, LogReader};
use xpol_runtime::pcap::PcapStream;
use xpol_runtime::store::Store;

/// Records a terminal's table keeps under it (`xpol run`).
const RECENT: usize = 10;

/// Where records go: printed (JSON, or a line each), kept for a
/// terminal's table, and written to a capture.
pub struct LogSink {
    json: bool,
    /// Lines go to standard error: standard output is the capture.
    to_stderr: bool,
    /// The last records' lines, for a table redrawn in place, instead of
    /// printing them as they come.
    recent: Option<VecDeque<String>>,
    pcap: Option<PcapStream<StreamOutput>>,
    interfaces: Interfaces,
    pub records: u64,
}

impl LogSink {
    /// `pcap_out`: the capture to write (checked and opened now, before
    /// anything is attached); `inputs`: the files it must not replace;
    /// `keep_recent`: keep lines for a table rather than print them;
    /// `reports_on_stdout`: standard output carries reports, so the
    /// capture cannot go there.
    pub fn new(json: bool, pcap_out: Option<&Path>, inputs: &[&Path], keep_recent: bool, reports_on_stdout: bool) -> Result<LogSink> {
        let mut to_stderr = false;
        let pcap = match pcap_out {
            Some(path) => {
                let out = StreamOutput::create(path, inputs)?;
                if out.is_stdout() && reports_on_stdout {
                    anyhow::bail!("refusing to write the capture to {}: it is standard output, where the reports go; name a file or a FIFO", path.display());
                }
                to_stderr = out.is_stdout();
                Some(PcapStream::new(out, &path.display().to_string())?)
            }
            None => None,
        };
        Ok(LogSink { json, to_stderr, recent: keep_recent.then(VecDeque::new), pcap, interfaces: Interfaces::default(), records: 0 })
    }

    /// Takes every record `reader` has.
    pub fn take(&mut self, reader: &mut LogReader) -> Result<()> {
        let mut failed = None;
        reader.drain(|e| {
            if failed.is_none() {
                failed = self.record(e).err();
            }
        });
        failed.map_or(Ok(()), Err)
    }

    fn record(&mut self, e: &Entry<'_>) -> Result<()> {
        self.records += 1;
        if let Some(p) = &mut self.pcap {
            p.write(e.unix_ns, e.record.packet_len, &e.record.data)?;
        }
        if self.json {
            let line = serde_json::json!({"schema": super::REPORT_SCHEMA, "log": xpol_runtime::log::json(e, &mut self.interfaces)}).to_string();
            self.print(&line);
            return Ok(());
        }
        let line = format!("log {}", xpol_runtime::log::line(e, &mut self.interfaces));
        match &mut self.recent {
            Some(recent) => {
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back(line);
            }
            None => self.print(&line),
        }
        Ok(())
    }

    fn print(&self, line: &str) {
        if self.to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// The last records, oldest first (with `keep_recent`).
    pub fn recent(&self) -> impl Iterator<Item = &String> {
        self.recent.iter().flatten()
    }

    /// Finishes the capture (a regular file is renamed into place).
    pub fn finish(self) -> Result<()> {
        if let Some(p) = self.pcap {
            p.into_inner().finish()?;
        }
        Ok(())
    }
}

/// What to say of records a policy lost (the ring buffer was full), one
/// line per `log` that lost some.
pub fn lost_warnings(reader: &LogReader) -> Vec<String> {
    let lost = reader.lost().unwrap_or_default();
    reader
        .logs()
        .iter()
        .zip(lost)
        .filter(|(_, n)| *n > 0)
        .map(|(l, n)| format!("the `log` on line {} lost {n} records: the ring buffer was full (read faster, or give it a `rate:`)", l.line))
        .collect()
}

/// What to say of each `log` of a report that lost records.
pub fn report_warnings(report: &serde_json::Value) -> Vec<String> {
    report["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["lost"].as_u64().unwrap_or(0) > 0)
        .map(|l| format!("the `log` on line {} lost {} records: the ring buffer was full (read faster, or give it a `rate:`)", l["line"], l["lost"]))
        .collect()
}

/// What is wrong with a test case's log records: the kernel's (with their
/// prefixes) differ from the reference's, or either misses what the case
/// expects (`, log`, `, log("P")`, `, !log`, `, !log("P")`).
pub fn test_mismatches(case: &xpol_compiler::ir::TestCase, kernel: &[(xpol_lang::meta::LogRecord, String)], reference: &[xpol_compiler::reference::Logged]) -> Vec<String> {
    let mut wrong = Vec::new();
    let shown = |prefixes: &[&str]| if prefixes.is_empty() { "nothing".to_string() } else { prefixes.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ") };
    let kernel_prefixes: Vec<&str> = kernel.iter().map(|(_, p)| p.as_str()).collect();
    let reference_prefixes: Vec<&str> = reference.iter().map(|l| l.prefix.as_str()).collect();
    let k: Vec<_> = kernel.iter().map(|(r, _)| (r.log as usize, r.rule, r.verdict_name(), u64::from(r.packet_len), &r.data[..])).collect();
    let r: Vec<_> = reference.iter().map(|l| (l.log, l.rule, l.verdict, l.packet_len, &l.data[..])).collect();
    if k != r {
        wrong.push(format!("log records: the kernel wrote {} ({}), the reference {} ({})", k.len(), shown(&kernel_prefixes), r.len(), shown(&reference_prefixes)));
    }
    for e in &case.logs {
        let holds = |prefixes: &[&str]| match (&e.prefix, e.logged) {
            (None, logged) => prefixes.is_empty() != logged,
            (Some(p), logged) => prefixes.contains(&p.as_str()) == logged,
        };
        if !holds(&kernel_prefixes) || !holds(&reference_prefixes) {
            let what = format!("{}log{}", if e.logged { "" } else { "!" }, e.prefix.as_ref().map(|p| format!("({p:?})")).unwrap_or_default());
            wrong.push(format!("expected {what}: the kernel logged {}, the reference {}", shown(&kernel_prefixes), shown(&reference_prefixes)));
        }
    }
    wrong
}

/// `xpol log NAME`: prints the records of an applied policy as they come,
/// until Ctrl-C, SIGTERM or `duration`; follows the policy when it is
/// replaced, and stops when it is deleted.
pub fn follow(name: &str, json: bool, duration: Option<f64>, pcap_out: Option<&Path>) -> Result<ExitCode> {
    xpol_runtime::store::check_name(name)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    // The capture is opened (or refused) first.
    let mut sink = LogSink::new(json, pcap_out, &[], false, false)?;
    let (mut reader, mut generation) = open_current(name)?;
    eprintln!("following the log of `{name}` (generation {generation}); Ctrl-C to stop");
    let start = Instant::now();
    let mut checked = Instant::now();
    let mut deleted = false;
    loop {
        reader.wait(Duration::from_millis(100))?;
        sink.take(&mut reader)?;
        if stop.load(Ordering::SeqCst) || duration.is_some_and(|d| start.elapsed().as_secs_f64() >= d) {
            break;
        }
        // A replace makes a generation with a ring of its own; the old
        // one's last records are read before following the new one.
        if checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            match current_generation(name) {
                Ok(Some(g)) if g != generation => {
                    sink.take(&mut reader)?;
                    warn_lost(&reader);
                    (reader, generation) = open_current(name)?;
                    eprintln!("`{name}` was replaced: following generation {generation}");
                }
                Ok(_) => {}
                Err(xpol_runtime::loader::RuntimeError::NotApplied(_)) => {
                    deleted = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    sink.take(&mut reader)?;
    warn_lost(&reader);
    if deleted {
        eprintln!("`{name}` was deleted");
    }
    eprintln!("{} records", sink.records);
    sink.finish()?;
    Ok(ExitCode::SUCCESS)
}

fn warn_lost(reader: &LogReader) {
    for w in lost_warnings(reader) {
        eprintln!("warning: {w}");
    }
    if reader.malformed > 0 {
        eprintln!("warning: {} records could not be read (not the layout the policy's metadata describes)", reader.malformed);
    }
}

/// The reader of the current generation of `name` and its number. The
/// store's lock is held only while the maps are opened.
fn open_current(name: &str) -> Result<(LogReader, u64)> {
    let store = Store::read()?.with_context(|| format!("no policy is applied as `{name}` (see `xpol list`)"))?;
    let applied = store.applied(name)?;
    let current = applied.current.as_ref().with_context(|| format!("`{name}`: {}", applied.problems.join("; ")))?;
    let maps = current.maps()?;
    let reader = LogReader::open(&maps)?.with_context(|| format!("`{name}` logs nothing: its policy has no `log` statement"))?;
    Ok((reader, current.record.generation))
}

/// The current generation of `name`, or `None` while a writer holds the
/// store (an apply in progress: asked again later).
fn current_generation(name: &str) -> std::result::Result<Option<u64>, xpol_runtime::loader::RuntimeError> {
    let Some(store) = Store::read_now()? else { return Ok(None) };
    let applied = store.applied(name)?;
    Ok(applied.current.map(|g| g.record.generation))
}
