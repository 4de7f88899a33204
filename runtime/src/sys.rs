//! Raw `bpf(2)` calls that aya 0.14 does not offer for maps whose key and
//! value sizes are known only at run time (from the object's metadata).
//!
//! Architecture invariant: this is the only module of xpol with unsafe code.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// `union bpf_attr` as used by the map element commands.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

/// A descriptor the kernel just returned from `bpf()`, owned from here on.
fn owned(fd: libc::c_long) -> std::os::fd::OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us, and nothing
    // else holds it.
    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly laid out `bpf_attr` prefix of the
    // size passed; pointers inside it point to buffers that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T as *mut libc::c_void, std::mem::size_of::<T>() as u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `BPF_MAP_UPDATE_ELEM`. `key` and `value` must have the map's sizes (a
/// per-CPU map takes one 8-byte-aligned slot per possible CPU).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value_or_next_key: value.as_ptr() as u64,
        flags,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// `BPF_MAP_LOOKUP_ELEM` into `value`; `Ok(false)` when the key is absent.
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value_or_next_key: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_GET_NEXT_KEY`: the key after `key` (the first with `None`);
/// `Ok(false)` at the end.
pub fn map_next_key(map: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value_or_next_key: next.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `union bpf_attr` as used by the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `BPF_MAP_UPDATE_BATCH` (Linux 5.6): `keys` and `values` hold the same
/// number of keys and values of the map's sizes, back to back, written in
/// one call (a Maglev table of 65,537 entries: one system call rather than
/// 65,537). Fails with `EINVAL` on kernels without batches; on another
/// failure some of the entries may have been written.
pub fn map_update_batch(map: BorrowedFd<'_>, keys: &[u8], key_size: usize, values: &[u8], value_size: usize) -> io::Result<()> {
    let count = keys.len() / key_size.max(1);
    if key_size == 0 || value_size == 0 || !keys.len().is_multiple_of(key_size) || values.len() != count * value_size {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // The kernel reads `count` keys and values of the map's own sizes.
    check_batch_sizes(map, key_size, value_size)?;
    let mut done = 0;
    // The kernel may stop early (a signal): go on from where it stopped.
    while done < count {
        let mut attr = BatchAttr {
            keys: keys[done * key_size..].as_ptr() as u64,
            values: values[done * value_size..].as_ptr() as u64,
            count: u32::try_from(count - done).unwrap_or(u32::MAX),
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        if attr.count == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        done += attr.count as usize;
    }
    Ok(())
}

/// One step of `BPF_MAP_LOOKUP_BATCH` (Linux 5.6; hash and array maps):
/// up to `keys.len() / key_size` entries (`key_size` and `value_size` the
/// map's own, as the kernel writes those) from where `token` says (`None`:
/// the start), into `keys` and `values`; `next` receives the token of the
/// next step (8 bytes hold every map's: a hash map's bucket, an array's
/// index). Returns the number of entries read and whether the map has
/// more. A hash map bucket with more entries than the buffers hold fails
/// with `ENOSPC`: call again with larger buffers.
pub fn map_lookup_batch(map: BorrowedFd<'_>, token: Option<&[u8; 8]>, next: &mut [u8; 8], keys: &mut [u8], key_size: usize, values: &mut [u8], value_size: usize) -> io::Result<(usize, bool)> {
    let count = keys.len() / key_size.max(1);
    if key_size == 0 || count == 0 || keys.len() != count * key_size || values.len() != count * value_size {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // The kernel writes keys and values of the map's own sizes (and a
    // token of its key size for an array).
    check_batch_sizes(map, key_size, value_size)?;
    if key_size > next.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut attr = BatchAttr {
        in_batch: token.map_or(0, |t| t.as_ptr() as u64),
        out_batch: next.as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(_) => Ok((attr.count as usize, true)),
        // The end of the map, with the last entries read.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((attr.count as usize, false)),
        Err(e) => Err(e),
    }
}

/// Refuses sizes other than the map's: the batch commands read and write
/// the map's own sizes whatever the buffers hold. A per-CPU map's value
/// is one 8-byte-aligned slot per possible CPU.
fn check_batch_sizes(map: BorrowedFd<'_>, key_size: usize, value_size: usize) -> io::Result<()> {
    let (ty, key, value, _) = map_shape(map)?;
    let per_cpu = matches!(ty, 5 | 6 | 10); // PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
    let value = if per_cpu {
        let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok().and_then(|s| possible_cpus(&s)).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        (value as usize).div_ceil(8) * 8 * cpus
    } else {
        value as usize
    };
    if key as usize != key_size || value != value_size {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// The number of possible CPUs in the form of
/// `/sys/devices/system/cpu/possible` (`0-3`, `0,2-5`): one past the
/// highest listed, as the kernel sizes per-CPU values.
fn possible_cpus(list: &str) -> Option<usize> {
    list.trim().split(',').filter_map(|r| r.rsplit('-').next()?.trim().parse::<usize>().ok()).max().map(|m| m + 1)
}

/// Whether this process can create BPF objects, tried by creating (and
/// closing) a one-element array map. The error says why not, in words.
pub fn can_load_bpf() -> Result<(), String> {
    match map_create("xpol_probe", BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0) {
        Ok(_closed_on_drop) => Ok(()),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "not permitted to use bpf(): run as root, or grant CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels before 5.8)".to_string()
            }
            Some(libc::ENOSYS) => "this kernel has no bpf() system call (CONFIG_BPF_SYSCALL)".to_string(),
            _ => format!("bpf(BPF_MAP_CREATE) failed: {e}"),
        }),
    }
}

/// `if_nametoindex(3)`: 0 when there is no such interface.
pub fn if_nametoindex(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else { return 0 };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// `if_indextoname(3)`: `None` when no interface has that index (now).
pub fn if_indextoname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes the call may write (the name
    // and its NUL); it returns null, writing nothing useful, on failure.
    let r = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if r.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Waits up to `timeout` for `fd` to have something to read (`poll(2)`):
/// true when it has, false when the time ran out or a signal came
/// (`EINTR`: the caller looks at its flags and waits again).
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(r > 0 && pfd.revents & libc::POLLIN != 0)
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes sure a BPF filesystem is mounted at /sys/fs/bpf (mounting one when
/// it is not), and says in words why not when that fails.
pub fn ensure_bpffs() -> Result<(), String> {
    let path = std::ffi::CString::new("/sys/fs/bpf").expect("no NUL");
    // SAFETY: `st` is a plain C struct the kernel fills in; `path` outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0;
    if ok && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: all arguments are valid NUL-terminated strings or null.
    let r = unsafe { libc::mount(fstype.as_ptr(), path.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "no BPF filesystem at /sys/fs/bpf and mounting one failed ({}); mount it with `mount -t bpf bpf /sys/fs/bpf`",
            io::Error::last_os_error()
        ))
    }
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr` as used by `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What `BPF_PROG_TEST_RUN` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRunReport {
    pub retval: u32,
    /// Mean nanoseconds per run, as the kernel measured them.
    pub duration_ns: u32,
}

/// `BPF_PROG_TEST_RUN` on any program descriptor, including one obtained by
/// id for a program another tool loaded: aya test-runs only programs it
/// holds by type, and cannot make an `Xdp` from a program id without a type
/// it does not export (`XdpAttachType`). `ctx_in` is the context (`struct
/// xdp_md` for XDP). (For `BPF_F_TEST_XDP_LIVE_FRAMES`, aya 0.14 has
/// `TestRunAttrs::xdp_live_frames`.)
pub fn prog_test_run(prog: BorrowedFd<'_>, data_in: &[u8], ctx_in: Option<&[u8]>, repeat: u32) -> io::Result<TestRunReport> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data_in.len() as u32,
        data_in: data_in.as_ptr() as u64,
        repeat,
        ctx_size_in: ctx_in.map_or(0, |c| c.len() as u32),
        ctx_in: ctx_in.map_or(0, |c| c.as_ptr() as u64),
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(TestRunReport { retval: attr.retval, duration_ns: attr.duration })
}

/// `BPF_PROG_TEST_RUN` once on any program descriptor (as
/// [`prog_test_run`]), returning the program's return value and the frame
/// as it left the program (up to 4 KiB past the input: what `lb` adds in
/// front of a packet fits).
pub fn prog_test_run_frame(prog: BorrowedFd<'_>, data_in: &[u8]) -> io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; data_in.len() + 4096];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data_in.len() as u32,
        data_in: data_in.as_ptr() as u64,
        data_size_out: out.len() as u32,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval, out))
}

/// Runs `f` on a new thread that has entered the network namespace `netns`
/// (a file such as `/run/netns/NAME`, as `ip netns add` makes them) and,
/// with `cpu`, is pinned to that CPU. Interface names, `BPF_PROG_TEST_RUN`
/// contexts that name an ifindex and XDP attachments then refer to that
/// namespace; the calling thread's namespace and affinity do not change.
/// A panic in `f` is passed on to the caller.
pub fn in_netns<T: Send>(netns: &std::path::Path, cpu: Option<usize>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = std::fs::File::open(netns)?;
    on_new_thread(|| {
        // SAFETY: `ns` is an open namespace file for the whole call; for
        // network namespaces setns changes only the calling thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(cpu) = cpu {
            pin_to_cpu(cpu)?;
        }
        Ok(f())
    })
}

/// Runs `f` on a new thread pinned to CPU `cpu`; a panic in `f` is passed
/// on to the caller.
pub fn on_cpu<T: Send>(cpu: usize, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    on_new_thread(|| {
        pin_to_cpu(cpu)?;
        Ok(f())
    })
}

/// Runs `f` on a new thread and waits for it, passing a panic on.
fn on_new_thread<T: Send>(f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    match std::thread::scope(|s| s.spawn(f).join()) {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array that sched_getaffinity fills;
    // CPU_ISSET reads it within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

/// Pins the calling thread to CPU `cpu`.
fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; CPU_SET bounds-checks `cpu`
    // against its size; sched_setaffinity reads `set` only.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restores the default SIGPIPE action, so that `xpol ... | head` ends
/// quietly like other Unix tools instead of failing on a closed pipe.
pub fn default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

// --- Pins, links and grace periods, for policies that outlive a process ---

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `BPF_LINK_UPDATE` flag: replace only if the link runs `old_prog_fd`.
const BPF_F_REPLACE: u32 = 4;
/// `BPF_OBJ_GET` flag: a read-only descriptor (maps).
pub const BPF_F_RDONLY: u32 = 1 << 3;

/// `union bpf_attr` as used by `BPF_OBJ_PIN` and `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `BPF_OBJ_PIN`: pins the object behind `fd` at `path` (on bpffs). The
/// kernel creates the file with mode 0600 less the umask; the directories
/// above it are what keeps other users out.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let c = path_cstring(path)?;
    let mut attr = ObjAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, ..Default::default() };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// `BPF_OBJ_GET`: a descriptor of the object pinned at `path`.
pub fn obj_get(path: &std::path::Path, flags: u32) -> io::Result<std::os::fd::OwnedFd> {
    let c = path_cstring(path)?;
    let mut attr = ObjAttr { pathname: c.as_ptr() as u64, file_flags: flags, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    Ok(owned(fd))
}

fn path_cstring(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// `union bpf_attr` as used by `BPF_PROG_GET_FD_BY_ID`.
#[repr(C)]
#[derive(Default)]
struct GetByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// `BPF_LINK_GET_FD_BY_ID`.
pub fn link_fd_by_id(id: u32) -> io::Result<std::os::fd::OwnedFd> {
    let mut attr = GetByIdAttr { id, ..Default::default() };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    Ok(owned(fd))
}

/// `BPF_PROG_GET_FD_BY_ID`.
pub fn prog_fd_by_id(id: u32) -> io::Result<std::os::fd::OwnedFd> {
    let mut attr = GetByIdAttr { id, ..Default::default() };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    Ok(owned(fd))
}

/// `union bpf_attr` as used by `BPF_LINK_UPDATE`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `BPF_LINK_UPDATE` with `BPF_F_REPLACE`: the link runs `new` from the
/// next packet on, if it still runs `expected` (else `EPERM`): one atomic
/// switch, no packet sees neither program.
pub fn link_update(link: BorrowedFd<'_>, new: BorrowedFd<'_>, expected: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new.as_raw_fd() as u32,
        flags: BPF_F_REPLACE,
        old_prog_fd: expected.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// `union bpf_attr` as used by `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What the kernel says of a link (`struct bpf_link_info`, the fields xpol reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// For XDP and tcx links: the interface, 0 once the link is detached
    /// (the interface was deleted, or someone ran `bpftool link detach`).
    pub ifindex: u32,
}

pub const BPF_LINK_TYPE_XDP: u32 = 6;
pub const BPF_LINK_TYPE_TCX: u32 = 11;

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // type, id, prog_id, then the 8-aligned union (xdp and tcx: ifindex first).
    let mut buf = [0u32; 16];
    let mut attr = InfoAttr { bpf_fd: link.as_raw_fd() as u32, info_len: std::mem::size_of_val(&buf) as u32, info: buf.as_mut_ptr() as u64 };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let has_ifindex = buf[0] == BPF_LINK_TYPE_XDP || buf[0] == BPF_LINK_TYPE_TCX;
    Ok(LinkInfo { link_type: buf[0], id: buf[1], prog_id: buf[2], ifindex: if has_ifindex { buf[4] } else { 0 } })
}

const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

/// Every BPF link in the system (that this process may see).
pub fn links() -> Vec<LinkInfo> {
    let mut out = Vec::new();
    let mut attr = GetByIdAttr::default();
    while bpf(BPF_LINK_GET_NEXT_ID, &mut attr).is_ok() {
        attr.id = attr.next_id;
        if let Ok(info) = link_fd_by_id(attr.id).and_then(|fd| link_info(fd.as_fd())) {
            out.push(info);
        }
    }
    out
}

/// What the kernel says of a map: (type, key size, value size, max entries).
pub fn map_shape(map: BorrowedFd<'_>) -> io::Result<(u32, u32, u32, u32)> {
    let info = map_info(map)?;
    Ok((info[0], info[2], info[3], info[4]))
}

/// `struct bpf_map_info` as words: type, id, key_size, value_size,
/// max_entries, map_flags, ... Fails for a descriptor that is not a map.
fn map_info(map: BorrowedFd<'_>) -> io::Result<[u32; 24]> {
    let mut buf = [0u32; 24];
    let mut attr = InfoAttr { bpf_fd: map.as_raw_fd() as u32, info_len: std::mem::size_of_val(&buf) as u32, info: buf.as_mut_ptr() as u64 };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(buf)
}

/// The id of the program behind `prog` (`struct bpf_prog_info`: type, id).
pub fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    let mut buf = [0u32; 64];
    let mut attr = InfoAttr { bpf_fd: prog.as_raw_fd() as u32, info_len: std::mem::size_of_val(&buf) as u32, info: buf.as_mut_ptr() as u64 };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(buf[1])
}

/// Makes descriptor number `target` refer to the object behind `source`
/// (`dup3` with close-on-exec). The loader uses it to hand a program an
/// existing map: the program's instructions name maps by descriptor
/// number, fixed when the object was relocated, and the kernel resolves
/// them only when the program is loaded.
pub fn replace_fd(source: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both descriptors are open for the duration of the call;
    // dup3 closes what `target` referred to and makes it a copy of
    // `source`, so whoever owns `target` now owns that copy.
    if unsafe { libc::dup3(source.as_raw_fd(), target.as_raw_fd(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until every BPF program run that began before the call has
/// ended (`membarrier(MEMBARRIER_CMD_GLOBAL)`, which is `synchronize_rcu()`:
/// XDP and TC programs run inside RCU read-side sections). Where the
/// kernel refuses (nohz_full CPUs), waits 100 ms instead, far longer than
/// any program runs.
pub fn wait_for_running_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0 as libc::c_long, 0 as libc::c_long) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `union bpf_attr` as used by `BPF_MAP_CREATE`, up to the map's name.
#[repr(C)]
#[derive(Default)]
struct NamedMapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates an array map of `entries` values of `value_size` bytes, named
/// `name` (at most 15 bytes are kept), for data xpol keeps in bpffs.
pub fn array_map_create(name: &str, value_size: u32, entries: u32) -> io::Result<std::os::fd::OwnedFd> {
    map_create(name, BPF_MAP_TYPE_ARRAY, 4, value_size, entries, 0)
}

const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Creates an array map of `entries` values of `value_size` bytes that
/// user space can map into its memory ([`MappedValue`]; value `i` at
/// `i * value_size` rounded up to 8): the IPv4 prefix tables, which `xpol
/// set` changes a word at a time while programs read them. (aya creates
/// maps without `BPF_F_MMAPABLE`; the loader puts these in their place.)
/// Linux 5.5 or later.
pub fn mmapable_array_create(name: &str, value_size: u32, entries: u32) -> io::Result<std::os::fd::OwnedFd> {
    map_create(name, BPF_MAP_TYPE_ARRAY, 4, value_size, entries, BPF_F_MMAPABLE)
}

/// The values of an array map made by [`mmapable_array_create`],
/// mapped shared and writable: a store here is what the programs read
/// next, with no system call.
pub(crate) struct MappedValue {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping belongs to the value alone (unmapped once, on drop),
// and any thread may use or unmap it.
unsafe impl Send for MappedValue {}

impl MappedValue {
    /// Maps the first `len` bytes of `map`'s values. Fails (`EINVAL`) when
    /// the descriptor is not a mappable array map, or the map is smaller:
    /// only such a map's memory can neither shrink under the mapping nor be
    /// written by another process (xpol's writers hold the store's lock).
    pub(crate) fn map(map: BorrowedFd<'_>, len: usize) -> io::Result<MappedValue> {
        let info = map_info(map)?;
        if len == 0 || info[0] != BPF_MAP_TYPE_ARRAY || info[5] & BPF_F_MMAPABLE == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh shared mapping of the map's pages; the kernel
        // checks the fd, the flags and that `len` fits in the map.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, map.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedValue { ptr: std::ptr::NonNull::new(ptr.cast()).expect("mmap returned a mapping"), len })
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len), "access past the mapped value");
    }

    /// Copies bytes out of the value. Programs only read it, and writers
    /// hold the store's lock, so nothing changes it meanwhile.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) {
        self.check(offset, out.len());
        // SAFETY: in bounds (checked), and the mapping lives as long as self.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), out.len()) }
    }

    /// Copies bytes into the value: for bytes no program reads yet (a free
    /// chunk), published later by [`MappedValue::publish_u32`].
    pub(crate) fn write(&self, offset: usize, bytes: &[u8]) {
        self.check(offset, bytes.len());
        // SAFETY: in bounds (checked); the mapping lives as long as self.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(offset), bytes.len()) }
    }

    /// Stores one aligned u32 (little-endian, as BPF reads it on this
    /// host) in a single store, after every earlier write: a program sees
    /// the old word or the new one, and with the new one, what it points to.
    pub(crate) fn publish_u32(&self, offset: usize, value: u32) {
        self.check(offset, 4);
        assert!(offset % 4 == 0, "unaligned publish");
        // SAFETY: in bounds and aligned (the mapping is page-aligned);
        // other CPUs only read the word, so an atomic view of it is sound.
        let word = unsafe { std::sync::atomic::AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) };
        word.store(value.to_le(), std::sync::atomic::Ordering::Release);
    }
}

impl Drop for MappedValue {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
const BPF_F_NO_PREALLOC: u32 = 1;

/// Creates an LPM trie of at most `entries` keys of `key_size` bytes
/// (a u32 prefix length, then the data) with one-byte values. Used with
/// full-length keys only, it is a set of byte strings whose memory grows
/// with its contents: a hash map would allocate a bucket per possible
/// entry up front.
pub fn string_set_create(name: &str, key_size: u32, entries: u32) -> io::Result<std::os::fd::OwnedFd> {
    map_create(name, BPF_MAP_TYPE_LPM_TRIE, key_size, 1, entries, BPF_F_NO_PREALLOC)
}

fn map_create(name: &str, map_type: u32, key_size: u32, value_size: u32, max_entries: u32, map_flags: u32) -> io::Result<std::os::fd::OwnedFd> {
    let mut map_name = [0u8; 16];
    for (d, s) in map_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = NamedMapCreateAttr { map_type, key_size, value_size, max_entries, map_flags, map_name, ..Default::default() };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    Ok(owned(fd))
}

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// `BPF_MAP_DELETE_ELEM`; `Ok(false)` when the key was absent.
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut attr = MapElemAttr { map_fd: map.as_raw_fd() as u32, key: key.as_ptr() as u64, ..Default::default() };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `path` is on a BPF filesystem.
pub fn is_bpffs(path: &std::path::Path) -> bool {
    let Ok(c) = path_cstring(path) else { return false };
    // SAFETY: `st` is a plain C struct the kernel fills in; `c` outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

// --- Who holds an interface's XDP hook (rtnetlink) ---

/// The mode an XDP program is attached in, as the kernel reports it per
/// interface (`IFLA_XDP_*_PROG_ID`); iproute2 names them `xdpdrv`,
/// `xdpgeneric` and `xdpoffload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Driver,
    Generic,
    Offload,
}

// include/uapi/linux/netlink.h, rtnetlink.h, if_link.h
const NETLINK_ROUTE: i32 = 0;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const IFINFOMSG_LEN: usize = 16;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_XDP: u16 = 43;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
/// Attribute type bits that are flags, not the type (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;

/// The XDP programs attached to interface `ifindex` (of this thread's
/// network namespace) through netlink or a BPF link, each with its mode:
/// one `RTM_GETLINK` request over a `NETLINK_ROUTE` socket, the same
/// question `ip link show` asks. Empty when none is attached.
pub fn xdp_programs(ifindex: u32) -> io::Result<Vec<(XdpMode, u32)>> {
    let index = i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let socket = owned(fd as libc::c_long);
    let request = getlink_request(index);
    // An unconnected netlink socket sends to the kernel (port 0).
    // SAFETY: `request` is a live buffer of the length passed.
    let sent = unsafe { libc::send(socket.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // A link message without statistics is a few KiB; MSG_TRUNC makes
    // recv report the full length, so a longer one is an error, not a cut.
    let mut reply = vec![0u8; 64 * 1024];
    // SAFETY: `reply` is a live, writable buffer of the length passed.
    let got = unsafe { libc::recv(socket.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), libc::MSG_TRUNC) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    if got as usize > reply.len() {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    reply.truncate(got as usize);
    parse_getlink_reply(&reply)
}

/// `RTM_GETLINK` for one interface, without statistics (`IFLA_EXT_MASK`).
fn getlink_request(ifindex: i32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + IFINFOMSG_LEN + 8;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    m.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel assigns it
    // struct ifinfomsg: family AF_UNSPEC, pad, type, index, flags, change.
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&ifindex.to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&IFLA_EXT_MASK.to_ne_bytes());
    m.extend_from_slice(&RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    m
}

/// The attributes in `bytes` (`struct nlattr` each, 4-byte aligned):
/// (type without flag bits, payload). Stops at the first malformed one.
fn netlink_attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?) as usize;
        let ty = u16::from_ne_bytes(bytes.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let payload = bytes.get(4..len)?;
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

fn u32_of(payload: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

/// The XDP programs an `RTM_GETLINK` reply reports: each mode's program
/// id (`IFLA_XDP_{DRV,SKB,HW}_PROG_ID`, Linux 4.19), or on older kernels
/// the one program (`IFLA_XDP_PROG_ID`) in the mode `IFLA_XDP_ATTACHED`
/// names. An error reply becomes that error.
fn parse_getlink_reply(reply: &[u8]) -> io::Result<Vec<(XdpMode, u32)>> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed RTM_GETLINK reply");
    let len = u32::from_ne_bytes(reply.get(0..4).ok_or_else(malformed)?.try_into().expect("4 bytes")) as usize;
    let ty = u16::from_ne_bytes(reply.get(4..6).ok_or_else(malformed)?.try_into().expect("2 bytes"));
    let message = reply.get(NLMSG_HDRLEN..len).ok_or_else(malformed)?;
    match ty {
        NLMSG_ERROR => {
            let errno = i32::from_ne_bytes(message.get(0..4).ok_or_else(malformed)?.try_into().expect("4 bytes"));
            Err(io::Error::from_raw_os_error(errno.checked_neg().filter(|e| *e > 0).unwrap_or(libc::EIO)))
        }
        RTM_NEWLINK => {
            let attrs = message.get(IFINFOMSG_LEN..).ok_or_else(malformed)?;
            let Some((_, xdp)) = netlink_attrs(attrs).find(|(t, _)| *t == IFLA_XDP) else { return Ok(Vec::new()) };
            let (mut attached, mut only, mut by_mode) = (0u8, 0u32, Vec::new());
            for (t, payload) in netlink_attrs(xdp) {
                let mode = match t {
                    IFLA_XDP_ATTACHED => {
                        attached = payload.first().copied().unwrap_or(0);
                        continue;
                    }
                    IFLA_XDP_PROG_ID => {
                        only = u32_of(payload).unwrap_or(0);
                        continue;
                    }
                    IFLA_XDP_DRV_PROG_ID => XdpMode::Driver,
                    IFLA_XDP_SKB_PROG_ID => XdpMode::Generic,
                    IFLA_XDP_HW_PROG_ID => XdpMode::Offload,
                    _ => continue,
                };
                if let Some(id) = u32_of(payload).filter(|id| *id != 0) {
                    by_mode.push((mode, id));
                }
            }
            if by_mode.is_empty() && only != 0 {
                let mode = match attached {
                    XDP_ATTACHED_DRV => Some(XdpMode::Driver),
                    XDP_ATTACHED_SKB => Some(XdpMode::Generic),
                    XDP_ATTACHED_HW => Some(XdpMode::Offload),
                    _ => None,
                };
                by_mode.extend(mode.map(|m| (m, only)));
            }
            Ok(by_mode)
        }
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn possible_cpus_reads_the_kernels_list() {
        assert_eq!(super::possible_cpus("0-3\n"), Some(4));
        assert_eq!(super::possible_cpus("0"), Some(1));
        assert_eq!(super::possible_cpus("0,2-5"), Some(6));
        assert_eq!(super::possible_cpus(""), None);
    }

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    /// An `RTM_NEWLINK` reply with `attrs` after the ifinfomsg.
    fn newlink(attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + 16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&super::RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn getlink_reply_gives_each_modes_program() {
        use super::XdpMode::*;
        let mtu = attr(4, &1500u32.to_ne_bytes());
        // One program in generic mode, as Linux 4.19 and later report it
        // (the nest marked NLA_F_NESTED, as some kernels do).
        let xdp = [attr(2, &[2]), attr(6, &7u32.to_ne_bytes()), attr(4, &7u32.to_ne_bytes())].concat();
        let reply = newlink(&[mtu.clone(), attr(43 | 0x8000, &xdp)]);
        assert_eq!(super::parse_getlink_reply(&reply).expect("parsed"), vec![(Generic, 7)]);
        // Driver and offload at once (XDP_ATTACHED_MULTI): both.
        let xdp = [attr(2, &[4]), attr(5, &8u32.to_ne_bytes()), attr(7, &9u32.to_ne_bytes())].concat();
        assert_eq!(super::parse_getlink_reply(&newlink(&[attr(43, &xdp)])).expect("parsed"), vec![(Driver, 8), (Offload, 9)]);
        // Before 4.19: the mode and one id.
        let xdp = [attr(2, &[1]), attr(4, &5u32.to_ne_bytes())].concat();
        assert_eq!(super::parse_getlink_reply(&newlink(&[attr(43, &xdp)])).expect("parsed"), vec![(Driver, 5)]);
        // Nothing attached: XDP_ATTACHED_NONE, or no IFLA_XDP at all.
        assert_eq!(super::parse_getlink_reply(&newlink(&[attr(43, &attr(2, &[0]))])).expect("parsed"), vec![]);
        assert_eq!(super::parse_getlink_reply(&newlink(&[mtu])).expect("parsed"), vec![]);
    }

    #[test]
    fn getlink_error_and_malformed_replies_are_errors() {
        let mut error = Vec::new();
        error.extend_from_slice(&36u32.to_ne_bytes());
        error.extend_from_slice(&super::NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&[0; 10]);
        error.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        error.extend_from_slice(&[0; 16]);
        assert_eq!(super::parse_getlink_reply(&error).expect_err("an error").raw_os_error(), Some(libc::ENODEV));
        assert!(super::parse_getlink_reply(&[1, 2, 3]).is_err());
        let mut long = newlink(&[]);
        long[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(super::parse_getlink_reply(&long).is_err());
        // A zero-length attribute ends the walk instead of looping.
        assert_eq!(super::netlink_attrs(&[0, 0, 43, 0, 1, 2]).count(), 0);
    }
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock of the kernel's
/// `bpf_ktime_get_coarse_ns`, which programs stamp map entries with.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC_COARSE
    // exists on every Linux xpol runs on (2.6.32 and later), so the call
    // cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the kernel's
/// `bpf_ktime_get_ns`, which rate limits' buckets are stamped with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always
    // exists, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// Sends whole Ethernet frames out of one interface (of the calling
/// thread's network namespace), as they are: an `AF_PACKET` raw socket
/// bound to the interface. `xpol demo` sends its traffic with it, so that
/// each frame is one packet at the policy and the counters it shows are
/// exactly what was sent (a fragment included, which no ordinary socket
/// sends on demand).
pub struct FrameSender {
    socket: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl FrameSender {
    pub fn open(ifname: &str) -> io::Result<FrameSender> {
        let ifindex = if_nametoindex(ifname);
        if ifindex == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        // Protocol 0: the socket sends and receives nothing until bound, and
        // then only sends (no frames are queued to it).
        // SAFETY: socket takes integers only.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FrameSender { socket: owned(fd as libc::c_long), ifindex: ifindex as i32 })
    }

    /// Sends one frame (destination and source MAC first).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: all-zero is a valid `sockaddr_ll`.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(frame.get(..6).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?);
        // SAFETY: `frame` and `addr` are live for the call, with the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
