//! Issue 15: what xpol reads and writes as root, and the values it is
//! given, cannot make it replace what it should not, hang, grow without
//! bound, panic, or echo files it reads. Each test reproduces one finding;
//! everything happens in a temporary directory.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn xpolc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xpolc"))
}

fn xpol() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xpol"))
}

fn stderr(r: &Output) -> String {
    String::from_utf8_lossy(&r.stderr).into_owned()
}

/// Both streams: diagnostics for people are on stderr, in JSON on stdout.
fn both(r: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&r.stdout), stderr(r))
}

const POLICY: &str = "xdp /tcp.dport == 22/ { drop }\n";

/// A temporary directory with `p.xpol` (mode 0644) in it.
fn policy_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.xpol");
    std::fs::write(&p, POLICY).expect("write policy");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    (dir, p)
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().expect("run mkfifo").success();
    assert!(ok, "mkfifo {}", path.display());
}

// ---- 1. outputs --------------------------------------------------------

/// A character device (a null device made in the temporary directory, not
/// the host's) stays a device: the object is written into it.
#[test]
fn output_to_a_character_device_writes_into_it() {
    let (dir, p) = policy_dir();
    let null = dir.path().join("null");
    let ok = Command::new("mknod").arg(&null).args(["c", "1", "3"]).status().expect("run mknod").success();
    assert!(ok, "mknod (needs root)");
    let r = xpolc().args(["build"]).arg(&p).arg("-o").arg(&null).output().expect("run xpolc");
    assert!(r.status.success(), "{}", stderr(&r));
    let m = std::fs::symlink_metadata(&null).expect("still there");
    assert!(m.file_type().is_char_device(), "the device node was replaced: {:?}", m.file_type());
}

/// A FIFO receives the object, and stays a FIFO.
#[test]
fn output_to_a_fifo_writes_into_it() {
    let (dir, p) = policy_dir();
    let fifo = dir.path().join("out.fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).expect("read fifo"))
    };
    let r = xpolc().args(["build"]).arg(&p).arg("-o").arg(&fifo).output().expect("run xpolc");
    assert!(r.status.success(), "{}", stderr(&r));
    // Checked before joining: a reader of a replaced FIFO waits forever.
    assert!(std::fs::symlink_metadata(&fifo).expect("still there").file_type().is_fifo());
    let bytes = reader.join().expect("reader");
    assert_eq!(&bytes[..4], b"\x7fELF");
}

/// A symbolic link to the standard output (what `/dev/stdout` is) writes
/// the object there.
#[test]
fn output_to_stdout_through_a_link() {
    let (dir, p) = policy_dir();
    let link = dir.path().join("stdout");
    std::os::unix::fs::symlink("/proc/self/fd/1", &link).expect("symlink");
    let r = xpolc().args(["build"]).arg(&p).arg("-o").arg(&link).output().expect("run xpolc");
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(&r.stdout[..4], b"\x7fELF");
    assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink());
}

/// A symbolic link to a regular file is neither replaced nor followed.
#[test]
fn output_through_a_link_to_a_file_is_refused() {
    let (dir, p) = policy_dir();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep me").expect("write");
    let link = dir.path().join("out.o");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let r = xpolc().args(["build"]).arg(&p).arg("-o").arg(&link).output().expect("run xpolc");
    assert!(!r.status.success());
    assert!(stderr(&r).contains("out.o: it is a symbolic link"), "{}", stderr(&r));
    assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep me");
}

/// The policy, or a set file it reads, is not overwritten with the object.
#[test]
fn output_over_an_input_is_refused() {
    let (dir, p) = policy_dir();
    let set = dir.path().join("s.txt");
    std::fs::write(&set, "10.0.0.0/8\n").expect("write");
    let q = dir.path().join("q.xpol");
    std::fs::write(&q, "set s: cidr = file(\"s.txt\")\nxdp /ip.src in s/ { drop }\n").expect("write");
    for (policy, out) in [(&p, &p), (&q, &set)] {
        let before = std::fs::read(out).expect("read");
        let r = xpolc().args(["build"]).arg(policy).arg("-o").arg(out).output().expect("run xpolc");
        assert!(!r.status.success());
        assert!(stderr(&r).contains("it is one of the files being compiled"), "{}", stderr(&r));
        assert_eq!(std::fs::read(out).expect("read"), before);
    }
    // Through another name too (same device and inode).
    let alias = dir.path().join("alias.xpol");
    std::fs::hard_link(&p, &alias).expect("hard link");
    let r = xpolc().args(["build"]).arg(&p).arg("-o").arg(&alias).output().expect("run xpolc");
    assert!(!r.status.success(), "{}", stderr(&r));
    assert_eq!(std::fs::read_to_string(&p).expect("read"), POLICY);
}

#[test]
fn output_to_a_directory_is_refused() {
    let (dir, p) = policy_dir();
    let r = xpolc().args(["build"]).arg(&p).arg("-o").arg(dir.path()).output().expect("run xpolc");
    assert!(!r.status.success());
    assert!(stderr(&r).contains("it is a directory"), "{}", stderr(&r));
}

/// An object is 0666 less the umask, and no more readable than its sources.
#[test]
fn object_mode_follows_the_umask_and_the_sources() {
    let (dir, p) = policy_dir();
    let out = dir.path().join("p.o");
    let build = |umask: &str| {
        let cmd = format!("umask {umask}; exec \"$0\" build \"$1\" -o \"$2\"");
        let r = Command::new("sh").arg("-c").arg(cmd).arg(env!("CARGO_BIN_EXE_xpolc")).arg(&p).arg(&out).output().expect("run sh");
        assert!(r.status.success(), "{}", stderr(&r));
        std::fs::metadata(&out).expect("object").permissions().mode() & 0o777
    };
    assert_eq!(build("022"), 0o644);
    assert_eq!(build("027"), 0o640);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(build("022"), 0o600);
}

/// `--verifier-log` goes through the same checks, before anything is
/// loaded (the log is written only if the kernel rejects a program): a
/// link to a file is refused, the policy keeps its content.
#[test]
fn verifier_log_is_an_output_like_the_object() {
    if !xpol_runtime::testing::kernel_or_skip("verifier_log_is_an_output_like_the_object") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = std::fs::canonicalize("tests/verifier/too-many-maps.xpol").expect("policy");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep me").expect("write");
    let link = dir.path().join("log");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let r = xpolc().args(["check", "--kernel", "--verifier-log"]).arg(&link).arg(&policy).output().expect("run xpolc");
    assert!(!r.status.success());
    assert!(stderr(&r).contains("log: it is a symbolic link"), "{}", stderr(&r));
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep me");
    let r = xpol().args(["test", "--verifier-log"]).arg(&policy).arg(&policy).output().expect("run xpol");
    assert!(stderr(&r).contains("it is one of the files being compiled"), "{}", stderr(&r));
    assert!(std::fs::read_to_string(&policy).expect("policy").contains("set"));
}

// ---- 2. special files as input ----------------------------------------

/// Runs `cmd`, killing it after 30 s: the findings were hangs.
fn run_bounded(cmd: &mut Command) -> Output {
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("still running after 30 s: {cmd:?}");
        }
    }
}

/// A FIFO as the policy, as an include, as a set file, and a link to
/// `/dev/zero` as a set file: refused at once, saying what they are (with
/// the span that names them), never read.
#[test]
fn special_files_as_inputs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    mkfifo(&d.join("fifo"));
    std::os::unix::fs::symlink("/dev/zero", d.join("zero")).expect("symlink");
    let r = run_bounded(xpolc().arg("check").arg(d.join("fifo")));
    assert!(!r.status.success());
    assert!(stderr(&r).contains("it is a FIFO (named pipe), not a regular file"), "{}", stderr(&r));

    std::fs::write(d.join("inc.xpol"), "include \"fifo\"\nxdp { pass }\n").expect("write");
    let r = run_bounded(xpolc().args(["check", "--message-format", "json"]).arg(d.join("inc.xpol")));
    let e = both(&r);
    assert!(!r.status.success());
    assert!(e.contains("it is a FIFO (named pipe), not a regular file") && e.contains("\"line\":1"), "{e}");

    for (set, what) in [("fifo", "a FIFO (named pipe)"), ("zero", "a character device")] {
        let p = d.join(format!("set-{set}.xpol"));
        std::fs::write(&p, format!("set s: cidr = file(\"{set}\")\nxdp /ip.src in s/ {{ drop }}\n")).expect("write");
        let r = run_bounded(xpolc().args(["check", "--message-format", "json"]).arg(&p));
        let e = both(&r);
        assert!(!r.status.success());
        assert!(e.contains(&format!("it is {what}, not a regular file")) && e.contains("\"column\":20") && e.contains("\"line\":1,"), "{e}");
    }
}

/// A set file over the limit is refused without being read, naming the limit.
#[test]
fn set_file_over_the_size_limit_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = std::fs::File::create(dir.path().join("big.txt")).expect("create");
    // Sparse: no disk space used.
    big.set_len((256 << 20) + 1).expect("set_len");
    let p = dir.path().join("p.xpol");
    std::fs::write(&p, "set s: cidr = file(\"big.txt\")\nxdp /ip.src in s/ { drop }\n").expect("write");
    let r = run_bounded(xpolc().arg("check").arg(&p));
    assert!(!r.status.success());
    assert!(stderr(&r).contains("larger than 256 MiB"), "{}", stderr(&r));
}

/// `xpol test --pcap FIFO` and `xpol test OBJECT.o` for a FIFO do not hang.
#[test]
fn special_files_as_runtime_inputs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("x.o");
    mkfifo(&fifo);
    let r = run_bounded(xpol().arg("test").arg(&fifo));
    assert!(!r.status.success());
    assert!(stderr(&r).contains("it is a FIFO (named pipe), not a regular file"), "{}", stderr(&r));
    if !xpol_runtime::testing::kernel_or_skip("special_files_as_runtime_inputs_are_refused") {
        return;
    }
    let r = run_bounded(xpol().args(["test", "examples/firewall.xpol", "--pcap"]).arg(&fifo));
    assert!(!r.status.success());
    assert!(stderr(&r).contains("it is a FIFO (named pipe), not a regular file"), "{}", stderr(&r));
}

// ---- 3. command-line values -------------------------------------------

/// Durations and intervals are checked when the arguments are parsed
/// (exit 2, before anything is loaded or attached): `inf` and `1e20`
/// panicked after attaching, `nan` ran forever, `-1` was taken for a flag.
#[test]
fn bad_durations_and_intervals_are_refused_when_parsed() {
    for (flag, value) in [
        ("--interval", "inf"),
        ("--interval", "1e20"),
        ("--interval", "nan"),
        ("--interval", "0"),
        ("--interval", "-1"),
        ("--duration", "nan"),
        ("--duration", "inf"),
        ("--duration", "-1"),
        ("--duration", "0"),
        ("--duration", "1e20"),
        ("--duration", "soon"),
    ] {
        for cmd in [&["run", "p.xpol", "-i", "lo"][..], &["watch", "name"][..]] {
            let r = xpol().args(cmd).args([flag, value]).output().expect("run xpol");
            let e = stderr(&r);
            assert_eq!(r.status.code(), Some(2), "{cmd:?} {flag} {value}: {e}");
            assert!(e.contains(&format!("invalid value '{value}' for '{flag}")) && e.contains("seconds"), "{cmd:?} {flag} {value}: {e}");
        }
        let r = xpol().args(["watch", "name", &format!("{flag}={value}")]).output().expect("run xpol");
        assert_eq!(r.status.code(), Some(2), "{flag}={value}: {}", stderr(&r));
    }
}

// ---- 4. a tampered object ----------------------------------------------

/// `bytes` with the first `from` replaced by `to` (same length, so that
/// the ELF's offsets stay valid).
fn patch(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).unwrap_or_else(|| panic!("`{from}` not in the object"));
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to.as_bytes());
    out
}

fn object_of(text: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.xpol");
    std::fs::write(&p, text).expect("write");
    let b = xpol_compiler::build(&p, &xpol_compiler::BuildOptions::default());
    b.output.expect("compiles").object
}

/// Metadata that understates a map's key size made the kernel write the
/// real key into a smaller buffer (and `xpol run` panic). The loader now
/// compares the metadata with the maps the kernel made, before any lookup.
#[test]
fn metadata_understating_a_key_size_is_refused() {
    use xpol_runtime::loader::{LoadedPolicy, RuntimeError};
    if !xpol_runtime::testing::kernel_or_skip("metadata_understating_a_key_size_is_refused") {
        return;
    }
    let object = object_of("xdp { @seen[ip.src] = count(); pass }\n");
    // The @map's key is one ip (20 bytes); say 8 (a set's, an int's).
    let lying = patch(&object, "\"keys\":[\"ip\"],\"key_size\":20", "\"keys\":[\"int\"],\"key_size\":8");
    match LoadedPolicy::load(&lying) {
        Err(RuntimeError::BadMetadata(m)) => assert!(m.contains("has 20-byte keys") && m.contains("rebuild it"), "{m}"),
        Err(e) => panic!("expected BadMetadata, got {e}"),
        Ok(_) => panic!("an object whose metadata lies about a key size was loaded"),
    }
    // Keys too short for their components: refused when read, kernel or not.
    let short = patch(&object, "\"key_size\":20", "\"key_size\": 8");
    match xpol_runtime::loader::read_meta(&short) {
        Err(RuntimeError::BadMetadata(m)) => assert!(m.contains("too short"), "{m}"),
        other => panic!("expected BadMetadata, got {:?}", other.map(|_| ())),
    }
    // A set's map, and `xpol test` on the file: an error, not a panic.
    let object = object_of("set s: int = { 1, 2 }\nxdp /tcp.dport in s/ { drop }\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let o = dir.path().join("p.o");
    // (The sets of integers share one hash map, keyed by value and set id.)
    std::fs::write(&o, patch(&object, "\"kind\":\"shared_hash\"", "\"kind\":\"lpm_v6\"     ")).expect("write");
    let r = xpol().arg("test").arg(&o).output().expect("run xpol");
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains("has 12-byte keys and 1-byte values, the metadata says 20 and 1"), "{}", stderr(&r));
}

// ---- 5. file contents in diagnostics ----------------------------------

/// A file read with `file()` or `include` that is not a policy (here a
/// stand-in for /etc/shadow, with an escape sequence) is quoted in short
/// escaped excerpts only, in text and in JSON: never a whole line, never
/// a raw control byte.
#[test]
fn diagnostics_quote_only_escaped_excerpts_of_files_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let hash = "$6$SECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRET";
    std::fs::write(d.join("shadow"), format!("root:{hash}:19000:0:99999:7:::\n\x1b[2Jdaemon:*:19000:0:99999:7:::\n")).expect("write");
    std::fs::write(d.join("set.xpol"), "set s: cidr = file(\"shadow\")\nxdp /ip.src in s/ { drop }\n").expect("write");
    std::fs::write(d.join("inc.xpol"), "include \"shadow\"\nxdp { pass }\n").expect("write");
    // A link named like a policy does not make the file one.
    std::os::unix::fs::symlink(d.join("shadow"), d.join("shadow.xpol")).expect("symlink");
    std::fs::write(d.join("link.xpol"), "include \"shadow.xpol\"\nxdp { pass }\n").expect("write");
    for policy in ["set.xpol", "inc.xpol", "link.xpol"] {
        for format in ["human", "json", "sarif"] {
            let r = xpolc().args(["check", "--message-format", format]).arg(d.join(policy)).output().expect("run xpolc");
            let e = both(&r);
            assert!(!r.status.success(), "{policy} {format}: {e}");
            assert!(!e.contains(hash) && !e.contains("SECRET:19000"), "{policy} {format}: a line was echoed:\n{e}");
            assert!(!e.contains('\x1b'), "{policy} {format}: a raw control byte:\n{e}");
            assert!(e.contains("root:"), "{policy} {format}: no excerpt:\n{e}");
        }
    }
    // The set file's second line, escaped, in its message.
    let r = xpolc().args(["check", "--message-format", "json"]).arg(d.join("set.xpol")).output().expect("run xpolc");
    assert!(both(&r).contains(r"`\\u{1b}[2Jdaemon:*:19000:0:99999:7:::` is not"), "{}", both(&r));
}

// ---- 6. messages --------------------------------------------------------

/// A capture cut inside its third record: the two before it are read, and
/// the stop is reported with the record's number (it was "Error reading
/// bytes", and nothing was run).
#[test]
fn truncated_capture_keeps_the_records_before_the_cut() {
    use xpol_runtime::packet::PacketSpec;
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("t.pcap");
    let frame = PacketSpec::tcp4("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap(), 1, 22).build();
    xpol_runtime::pcap::write_frames(&pcap, &[frame.clone(), frame.clone(), frame.clone()]).expect("write pcap");
    let bytes = std::fs::read(&pcap).expect("read");
    std::fs::write(&pcap, &bytes[..bytes.len() - 10]).expect("truncate");
    let c = xpol_runtime::pcap::read_frames(&pcap).expect("read what is there");
    assert_eq!(c.frames.len(), 2);
    let why = c.stopped.expect("the cut is reported");
    assert!(why.contains("record 3 cannot be read") && why.contains("the 2 frames before it were read"), "{why}");
    if !xpol_runtime::testing::kernel_or_skip("truncated_capture_keeps_the_records_before_the_cut") {
        return;
    }
    let r = xpol().args(["test", "examples/firewall.xpol", "--json", "--pcap"]).arg(&pcap).output().expect("run xpol");
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("warning:") && stderr(&r).contains("record 3 cannot be read"), "{}", stderr(&r));
    assert_eq!(String::from_utf8_lossy(&r.stdout).lines().count(), 3, "two packets and the counters");
}

/// Without the rights to the store, `xpol stats` says to run as root (it
/// said only that BPF_OBJ_GET failed). A private bpffs, as tests/apply.rs.
#[test]
fn stats_without_rights_says_run_as_root() {
    if !xpol_runtime::testing::kernel_or_skip("stats_without_rights_says_run_as_root") {
        return;
    }
    let script = "mount -t bpf bpf /sys/fs/bpf && mkdir -m 700 /sys/fs/bpf/xpol && \
        exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all \"$0\" stats fw";
    let r = Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", script]).arg(env!("CARGO_BIN_EXE_xpol")).output().expect("run unshare");
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains("run xpol as root"), "{}", stderr(&r));
}
