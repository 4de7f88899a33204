//! Applied policies in tests: a private bpffs per test ([`Host`], driven
//! through the `xpol` binary), or the host's own store under a name of the
//! test's ([`apply_in_host_store`], driven through the library).

use super::net::{output_bounded, Net};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

/// A private mount namespace with a fresh bpffs at /sys/fs/bpf, held
/// open by a sleeping process; commands enter it (and a network namespace).
pub struct Host {
    holder: Child,
}

impl Host {
    pub fn new() -> Host {
        let holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", "mount -t bpf bpf /sys/fs/bpf && echo ready && exec sleep 600"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut host = Host { holder };
        let mut line = [0u8; 6];
        host.holder.stdout.as_mut().expect("stdout").read_exact(&mut line).expect("the holder is ready");
        host
    }

    /// A command inside the private mount namespace and the network namespace `netns`.
    pub fn command(&self, netns: &str, program: &str) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["60", "nsenter", "-t", &self.holder.id().to_string(), "-m", &format!("--net=/run/netns/{netns}"), program]);
        cmd
    }

    pub fn xpol(&self, netns: &str, args: &[&str]) -> Output {
        let mut cmd = self.command(netns, env!("CARGO_BIN_EXE_xpol"));
        cmd.args(args);
        output_bounded(cmd)
    }

    /// `xpol ARGS`, which must succeed; its stdout.
    pub fn ok(&self, netns: &str, args: &[&str]) -> String {
        let out = self.xpol(netns, args);
        assert!(out.status.success(), "xpol {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A shell command in the private mount namespace (setting up odd files).
    pub fn sh(&self, script: &str) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.args(["20", "nsenter", "-t", &self.holder.id().to_string(), "-m", "sh", "-c", script]);
        output_bounded(cmd)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Deletes an applied policy from the host's store when the test ends.
pub struct HostPolicy(pub String);

impl Drop for HostPolicy {
    fn drop(&mut self) {
        if let Ok(store) = xpol_runtime::store::Store::write() {
            let _ = store.delete(&self.0);
        }
    }
}

/// Compiles `text` and applies it in the host's store, on the interface
/// of `net`'s namespace b (entered for the attach only), under a name of
/// this test process (`test-KIND-PID`), deleted when the guard drops.
pub fn apply_in_host_store(net: &Net, kind: &str, text: &str) -> HostPolicy {
    use xpol_runtime::apply::{self, ApplyRequest};
    let guard = HostPolicy(format!("test-{kind}-{}", std::process::id()));
    let name = guard.0.as_str();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join(format!("{name}.xpol"));
    std::fs::write(&policy, text).expect("write policy");
    let object = xpol_compiler::build(&policy, &xpol_compiler::BuildOptions::default()).output.expect("compiles").object;
    let netns = PathBuf::from("/run/netns").join(&net.b);
    xpol_runtime::sys::in_netns(&netns, None, || {
        let req = ApplyRequest {
            name,
            object: &object,
            source: format!("{name}.xpol"),
            interfaces: vec![net.vb.clone()],
            hooks: None,
            mode: xpol_runtime::loader::XdpAttachMode::Auto,
            set_contents: Default::default(),
        };
        apply::apply(&xpol_runtime::store::Store::write().expect("store"), &req).expect("apply");
    })
    .expect("netns");
    guard
}

/// The program the applied policy `name`'s (first) link runs.
pub fn running_program(store: &xpol_runtime::store::Store, name: &str) -> u32 {
    store.applied(name).expect("applied").links.first().expect("a link").prog_id
}
