//! A Python script run in a network namespace for the kernel tests: a
//! server or a client of the test's traffic, spoken to line by line,
//! bounded by `timeout`, ended on drop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// `python3 -c SCRIPT ARGS` in namespace `ns`, killed after `secs`, its
/// standard input and output piped.
pub fn spawn(ns: &str, secs: u32, script: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", &secs.to_string(), "python3", "-c", script])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3")
}

/// A Python script in a namespace (`timeout` bounds it), ended through
/// its standard input when dropped, killed if it does not end.
pub struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Script {
    pub fn start(ns: &str, secs: u32, script: &str, args: &[&str]) -> Script {
        let mut child = spawn(ns, secs, script, args);
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Script { child, stdin, stdout }
    }

    /// The next line it prints (its `timeout` bounds the wait).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        line.trim().to_string()
    }

    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
    }

    /// Closes its standard input and returns the last line it prints.
    pub fn finish(mut self) -> String {
        drop(self.stdin.take());
        let mut last = String::new();
        for line in (&mut self.stdout).lines() {
            last = line.expect("read");
        }
        last
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
