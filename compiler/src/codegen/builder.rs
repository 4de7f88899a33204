//! [`Bpf`], the one type through which codegen talks to LLVM: packet loads,
//! helper calls, map lookups and updates, counters, control flow and debug
//! locations. Everything here knows eBPF conventions (helper ids, map
//! definitions with BTF); nothing here knows the policy language.

use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::debug_info::{AsDIScope, DIFile, DIFlags, DIFlagsConstants, DIScope, DISubprogram, DIType, DebugInfoBuilder};
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicType, IntType, PointerType};
use inkwell::values::{BasicMetadataValueEnum, BasicValueEnum, CallableValue, FunctionValue, GlobalValue, InstructionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, AtomicOrdering, AtomicRMWBinOp, IntPredicate};

/// Kernel helper function ids (include/uapi/linux/bpf.h).
pub mod helper {
    pub const MAP_LOOKUP_ELEM: u64 = 1;
    pub const MAP_UPDATE_ELEM: u64 = 2;
    pub const MAP_DELETE_ELEM: u64 = 3;
    pub const KTIME_GET_NS: u64 = 5;
    pub const GET_SMP_PROCESSOR_ID: u64 = 8;
    pub const SKB_STORE_BYTES: u64 = 9;
    pub const L3_CSUM_REPLACE: u64 = 10;
    pub const L4_CSUM_REPLACE: u64 = 11;
    pub const REDIRECT: u64 = 23;
    pub const SKB_LOAD_BYTES: u64 = 26;
    pub const CSUM_DIFF: u64 = 28;
    pub const SKB_PULL_DATA: u64 = 39;
    pub const XDP_ADJUST_HEAD: u64 = 44;
    pub const XDP_ADJUST_TAIL: u64 = 65;
    pub const FIB_LOOKUP: u64 = 69;
    pub const RINGBUF_RESERVE: u64 = 131;
    pub const RINGBUF_SUBMIT: u64 = 132;
    pub const KTIME_GET_COARSE_NS: u64 = 160;
    pub const XDP_LOAD_BYTES: u64 = 189;
    /// SYN cookies without a socket (Linux 6.0).
    pub const TCP_RAW_GEN_SYNCOOKIE_IPV4: u64 = 204;
    pub const TCP_RAW_GEN_SYNCOOKIE_IPV6: u64 = 205;
    pub const TCP_RAW_CHECK_SYNCOOKIE_IPV4: u64 = 206;
    pub const TCP_RAW_CHECK_SYNCOOKIE_IPV6: u64 = 207;
}

/// Map types (enum bpf_map_type).
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERCPU_HASH: u32 = 5;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LRU_HASH: u32 = 9;
    pub const LPM_TRIE: u32 = 11;
    pub const RINGBUF: u32 = 27;
}

pub const BPF_F_NO_PREALLOC: u32 = 1;
/// Offset of the receiving interface's index in the XDP context
/// (`xdp_md.ingress_ifindex`).
pub const XDP_MD_INGRESS_IFINDEX: u64 = 12;
/// `E2BIG`: what `bpf_map_update_elem` returns (negated) when a
/// (preallocated) hash map is full and the key is new.
const E2BIG: u64 = 7;
pub const BPF_ANY: u64 = 0;
pub const BPF_NOEXIST: u64 = 1;

/// A BPF map definition: a global in `.maps` described in BTF.
#[derive(Clone, Copy)]
pub struct MapDef<'ctx> {
    pub global: GlobalValue<'ctx>,
}

/// A table in global data, see [`ModuleCx::global_table`].
#[derive(Clone, Copy)]
pub struct TableDef<'ctx> {
    pub base: PointerValue<'ctx>,
}

/// The per-rule counters (`xpol_lang::meta::COUNTERS_MAP`): blocks in
/// global data for the first `global.cpus` CPUs, a per-CPU array map for
/// the others, which also holds the `@maps`' lost updates
/// (`xpol_lang::meta::counter_slots`).
#[derive(Clone, Copy)]
pub struct Counters<'ctx> {
    pub map: MapDef<'ctx>,
    pub global: Option<GlobalCounters<'ctx>>,
}

#[derive(Clone, Copy)]
pub struct GlobalCounters<'ctx> {
    pub base: PointerValue<'ctx>,
    pub cpus: u64,
    pub stride: u64,
}

/// The successor that the weights of `bb`'s conditional branch favour.
fn likely_successor<'ctx>(bb: BasicBlock<'ctx>, prof: u32) -> Option<BasicBlock<'ctx>> {
    let br = bb.get_terminator()?;
    if br.get_opcode() != inkwell::values::InstructionOpcode::Br || br.get_num_operands() != 3 {
        return None;
    }
    let weights = br.get_metadata(prof)?.get_node_values()?;
    let weight = |i: usize| match weights.get(i) {
        Some(BasicMetadataValueEnum::IntValue(v)) => v.get_zero_extended_constant().unwrap_or(0),
        _ => 0,
    };
    // Operands of a conditional `br`: condition, false, true; the weights
    // (after the name): true, false.
    let dest = |i: u32| match br.get_operand(i) {
        Some(inkwell::values::Operand::Block(b)) => Some(b),
        _ => None,
    };
    if weight(1) >= weight(2) {
        dest(2)
    } else {
        dest(1)
    }
}

/// Module-level state shared by all programs of one object.
pub struct ModuleCx<'ctx> {
    pub cx: &'ctx Context,
    pub module: Module<'ctx>,
    pub di: DebugInfoBuilder<'ctx>,
    pub di_cu: inkwell::debug_info::DICompileUnit<'ctx>,
    pub di_int: DIType<'ctx>,
}

impl<'ctx> ModuleCx<'ctx> {
    pub fn i8(&self) -> IntType<'ctx> {
        self.cx.i8_type()
    }

    pub fn i8_ptr(&self) -> PointerType<'ctx> {
        self.cx.i8_type().ptr_type(AddressSpace::default())
    }

    /// Declares a map the way libbpf's `__uint(...)` macros do: a struct of
    /// pointers to arrays whose lengths carry the parameters, so that aya,
    /// libbpf and bpftool all understand it from BTF alone.
    pub fn define_map(&self, name: &str, ty: u32, key_size: u32, value_size: u32, max_entries: u32, flags: u32) -> MapDef<'ctx> {
        let fields = [("type", ty), ("key_size", key_size), ("value_size", value_size), ("max_entries", max_entries), ("map_flags", flags)];
        let fields: Vec<(&str, u32)> = fields.into_iter().filter(|(n, v)| *v != 0 || *n == "type").collect();
        let ptr = self.cx.i32_type().ptr_type(AddressSpace::default());
        let st = self.cx.struct_type(&vec![ptr.into(); fields.len()], false);
        let global = self.module.add_global(st, None, name);
        global.set_section(Some(".maps"));
        global.set_initializer(&st.const_zero());
        global.set_linkage(Linkage::External);
        global.set_alignment(8);

        let file = self.di_cu.get_file();
        let scope = self.di_cu.as_debug_info_scope();
        let members: Vec<DIType<'ctx>> = fields
            .iter()
            .enumerate()
            .map(|(i, (fname, value))| {
                // One dimension of `value` elements: inkwell takes subscripts as ranges.
                #[allow(clippy::single_range_in_vec_init)]
                let arr = self.di.create_array_type(self.di_int, 32 * *value as u64, 32, &[0..*value as i64]);
                let p = self.di.create_pointer_type("", arr.as_type(), 64, 64, AddressSpace::default());
                self.di.create_member_type(scope, fname, file, 0, 64, 64, 64 * i as u64, DIFlags::ZERO, p.as_type()).as_type()
            })
            .collect();
        let sty = self.di.create_struct_type(scope, "", file, 0, 64 * members.len() as u64, 64, DIFlags::ZERO, None, &members, 0, None, "");
        let gve = self.di.create_global_variable_expression(scope, name, name, file, 0, sty.as_type(), false, None, None, 64);
        global.set_metadata(gve.as_metadata_value(self.cx), self.cx.get_kind_id("dbg"));
        MapDef { global }
    }

    /// Zeroed tables at `offsets` in one global of `total` bytes in ELF
    /// section `section` (`.bss`), none when `offsets` is empty; see
    /// [`ModuleCx::global_data`].
    pub fn global_tables(&self, section: &str, offsets: &[u64], total: u64) -> Vec<TableDef<'ctx>> {
        if offsets.is_empty() {
            return Vec::new();
        }
        let base = self.global_data("xpol_tables", section, total);
        let i64t = self.cx.i64_type();
        // SAFETY (of the LLVM IR): each offset lies inside the global.
        offsets.iter().map(|&o| TableDef { base: unsafe { base.const_gep(&[i64t.const_int(o, false)]) } }).collect()
    }

    /// The per-rule counters: `map`, and `cpus` blocks of `stride` bytes in
    /// global data (ELF section `section`, `.data`) when `cpus` > 0.
    pub fn counters(&self, map: MapDef<'ctx>, section: &str, cpus: u32, stride: u32) -> Counters<'ctx> {
        let global = (cpus > 0).then(|| GlobalCounters {
            base: self.global_data("xpol_counters", section, u64::from(cpus) * u64::from(stride)),
            cpus: u64::from(cpus),
            stride: u64::from(stride),
        });
        Counters { map, global }
    }

    /// A zeroed global of `bytes` bytes in ELF section `section` (`.bss`
    /// or `.data`), as an `i8*`: loaders make each such section a one-entry
    /// array map whose value the program addresses directly (`ld_imm64` of
    /// the value's address, as for C globals), so an access is a load or a
    /// store, not a helper call; the runtime reads and writes the value in
    /// one map operation. Plain `.bss` and `.data`, because libbpf before
    /// 1.3 (Debian bookworm's bpftool) refuses custom `.bss.*` sections.
    fn global_data(&self, name: &str, section: &str, bytes: u64) -> PointerValue<'ctx> {
        let ty = self.cx.i8_type().array_type(bytes.clamp(8, u32::MAX as u64) as u32);
        let global = self.module.add_global(ty, None, name);
        global.set_section(Some(section));
        global.set_initializer(&ty.const_zero());
        global.set_linkage(Linkage::External);
        global.set_alignment(64);
        // Addressed in bytes: an `i8*`, not a pointer to the array type.
        global.as_pointer_value().const_cast(self.i8_ptr())
    }

    /// Puts the likely successor of every weighted branch
    /// ([`Bpf::cond_br_likely`], [`Bpf::cond_br_unlikely`]) right after the
    /// branch's block, after the IR is optimized and before the BPF backend
    /// runs. The backend cannot
    /// invert a conditional branch once blocks are placed (it does not
    /// analyze them), so a likely successor that is not the next block at
    /// instruction selection ends up as `if c goto +1; goto unlikely`: a
    /// taken jump on the common path. Next in the IR, instruction selection
    /// branches to the unlikely block and falls through.
    pub fn lay_out_likely_fallthrough(&self) {
        let prof = self.cx.get_kind_id("prof");
        for f in self.module.get_functions() {
            let blocks = f.get_basic_blocks();
            let Some(&entry) = blocks.first() else { continue };
            // Each block's likely successor, if a weighted branch names one
            // that no block before it (in the current order) claimed: the
            // parser's fast path comes before the general walk.
            let mut next: std::collections::HashMap<BasicBlock<'ctx>, BasicBlock<'ctx>> = Default::default();
            let mut claimed = std::collections::HashSet::new();
            for &bb in &blocks {
                if let Some(likely) = likely_successor(bb, prof).filter(|&l| l != entry && l != bb && !claimed.contains(&l)) {
                    claimed.insert(likely);
                    next.insert(bb, likely);
                }
            }
            // Chains of likely successors, in the order of their first
            // blocks; every block once.
            let mut order = Vec::with_capacity(blocks.len());
            let mut done = std::collections::HashSet::new();
            for &start in &blocks {
                let mut at = Some(start);
                while let Some(bb) = at.filter(|bb| done.insert(*bb)) {
                    order.push(bb);
                    at = next.get(&bb).copied();
                }
            }
            for pair in order.windows(2) {
                let _ = pair[1].move_after(pair[0]);
            }
        }
    }

    /// Read-only global data (ELF section `section`, `.rodata`) holding
    /// `bytes`, as an `i8*`: loaders make the section a frozen one-entry
    /// array map the program addresses directly, as [`ModuleCx::global_tables`].
    pub fn read_only_data(&self, name: &str, section: &str, bytes: &[u8]) -> PointerValue<'ctx> {
        let v = self.cx.const_string(bytes, false);
        let global = self.module.add_global(v.get_type(), None, name);
        global.set_section(Some(section));
        global.set_initializer(&v);
        global.set_linkage(Linkage::External);
        global.set_constant(true);
        global.set_alignment(64);
        global.as_pointer_value().const_cast(self.i8_ptr())
    }

    /// `offset` bytes into global data starting at `base`.
    pub fn table_at(&self, base: PointerValue<'ctx>, offset: u64) -> TableDef<'ctx> {
        // SAFETY (of the LLVM IR): the offset lies inside the global.
        TableDef { base: unsafe { base.const_gep(&[self.cx.i64_type().const_int(offset, false)]) } }
    }

    /// A read-only byte blob in its own ELF section (no BTF: loaders skip it).
    pub fn blob(&self, name: &str, section: &str, bytes: &[u8]) {
        let v = self.cx.const_string(bytes, false);
        let g = self.module.add_global(v.get_type(), None, name);
        g.set_initializer(&v);
        g.set_section(Some(section));
        g.set_linkage(Linkage::External);
        g.set_constant(true);
    }
}

/// Builds one program (one BPF function).
pub struct Bpf<'a, 'ctx> {
    pub m: &'a ModuleCx<'ctx>,
    pub b: Builder<'ctx>,
    pub func: FunctionValue<'ctx>,
    pub sub: DISubprogram<'ctx>,
    /// Debug scope per source file (the subprogram's own file, or a lexical
    /// block file for included files).
    /// The debug scope of each source file's code in this program, and the
    /// location it counts as inlined at (none for the program's own file).
    pub scopes: std::cell::RefCell<Vec<(xpol_lang::FileId, DIScope<'ctx>, Option<inkwell::debug_info::DILocation<'ctx>>)>>,
    entry: BasicBlock<'ctx>,
    /// Stack buffers by (purpose, size), shared by every use: the BPF stack
    /// has 512 bytes, and LLVM does not overlap separate allocas here.
    scratch: std::cell::RefCell<std::collections::HashMap<(&'static str, u32), PointerValue<'ctx>>>,
    sources: &'a xpol_lang::SourceMap,
    files: &'a std::collections::HashMap<xpol_lang::FileId, DIFile<'ctx>>,
    /// Every source position given to LLVM, with the span it stands for, so
    /// that a verifier message located by line info can be traced back to
    /// the exact expression.
    pub located: std::cell::RefCell<Vec<super::Located>>,
    /// Test-only fault, see [`Bpf::br_if_null`].
    pub omit_null_check: bool,
    /// The program is not specialized (`codegen::specialized`): it may
    /// have thousands of rules, and its IR is shaped so that LLVM's passes
    /// stay near linear in its length (see [`Bpf::stack_buf`]).
    pub long_program: bool,
    /// Once [`Bpf::spill_facts`] ran: where the parsed facts go.
    facts: std::cell::RefCell<Option<FactsInMap<'ctx>>>,
    /// See [`Bpf::cpu`].
    cpu: std::cell::Cell<Option<IntValue<'ctx>>>,
    /// The program's first location, where other files' code counts as
    /// inlined ([`Bpf::scope_for`]).
    anchor: std::cell::Cell<Option<inkwell::debug_info::DILocation<'ctx>>>,
    /// The span of the code being built ([`Bpf::locate`]).
    current_span: std::cell::Cell<Option<xpol_lang::Span>>,
    /// Each stack buffer as it is first needed: its size and the span of
    /// the code that needed it, so that a stack over the kernel's limit is
    /// blamed on the construct that crossed it.
    pub stack_uses: std::cell::RefCell<Vec<(u32, Option<xpol_lang::Span>)>>,
}

/// The map value holding the parsed facts; each fact's slot with its offset
/// there and whether it is stored yet; the instruction before which stores
/// go (the end of the block that copies the facts, before any rule).
struct FactsInMap<'ctx> {
    /// The map value, as looked up: where the copy block stores.
    copy_to: PointerValue<'ctx>,
    /// Where the rules read: the map value as last reloaded from `saved`
    /// ([`Bpf::reload_facts_pointer`]).
    value: PointerValue<'ctx>,
    saved: PointerValue<'ctx>,
    slots: Vec<(PointerValue<'ctx>, u64, bool)>,
    store_before: InstructionValue<'ctx>,
}

/// Makes `cx` drop the names of instructions, blocks and arguments (not
/// of globals, which the object's symbols and maps need): for objects
/// only, when no textual IR or assembly is asked for. Naming costs: each
/// name goes into the function's symbol table, made unique there, and out
/// again when the module is freed; with the names, a tenth of the time of
/// refusing 20,000 rules went to that table.
pub fn discard_value_names(cx: &Context) {
    // SAFETY: `cx` is a live context; the call only sets a flag on it.
    unsafe { llvm_sys::core::LLVMContextSetDiscardValueNames(cx.raw(), 1) };
}

/// Errors LLVM reports while it generates code, such as the BPF backend's
/// "stack limit of 512 bytes is exceeded". Without a handler LLVM prints
/// them and exits the process; with this one they are collected and the
/// build fails with a diagnostic.
pub struct LlvmErrors<'ctx> {
    cx: &'ctx Context,
    /// From `Box::into_raw`, owned here and freed in `drop` after the
    /// handler is removed: LLVM holds the same pointer meanwhile.
    errors: *mut std::cell::RefCell<Vec<String>>,
}

impl<'ctx> LlvmErrors<'ctx> {
    pub fn install(cx: &'ctx Context) -> Self {
        let errors = Box::into_raw(Box::<std::cell::RefCell<Vec<String>>>::default());
        // SAFETY: `errors` stays valid until `drop`, which removes the
        // handler before freeing it.
        unsafe { llvm_sys::core::LLVMContextSetDiagnosticHandler(cx.raw(), Some(collect_llvm_error), errors.cast()) };
        LlvmErrors { cx, errors }
    }

    pub fn take(&self) -> Vec<String> {
        // SAFETY: valid until `drop`; LLVM calls the handler only on this
        // thread, during codegen calls, never while this borrow is held.
        std::mem::take(&mut unsafe { &*self.errors }.borrow_mut())
    }
}

impl Drop for LlvmErrors<'_> {
    fn drop(&mut self) {
        // SAFETY: a null handler restores LLVM's default; then nothing else
        // holds `errors`, which came from `Box::into_raw`.
        unsafe {
            llvm_sys::core::LLVMContextSetDiagnosticHandler(self.cx.raw(), None, std::ptr::null_mut());
            drop(Box::from_raw(self.errors));
        }
    }
}

extern "C" fn collect_llvm_error(info: llvm_sys::prelude::LLVMDiagnosticInfoRef, data: *mut std::ffi::c_void) {
    // SAFETY: LLVM passes a valid diagnostic and the `data` given to
    // `LLVMContextSetDiagnosticHandler` (a live RefCell, see `install`); the
    // description is an LLVM-allocated C string we free.
    unsafe {
        if llvm_sys::core::LLVMGetDiagInfoSeverity(info) != llvm_sys::LLVMDiagnosticSeverity::LLVMDSError {
            return;
        }
        let text = llvm_sys::core::LLVMGetDiagInfoDescription(info);
        let message = std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned();
        llvm_sys::core::LLVMDisposeMessage(text);
        if let Ok(mut errors) = (*(data as *const std::cell::RefCell<Vec<String>>)).try_borrow_mut() {
            errors.push(message);
        }
    }
}

/// LLVM builder calls fail only when the builder is misused (no insertion
/// point), which is a bug in this module, never a property of the input.
fn ok<T>(r: Result<T, inkwell::builder::BuilderError>) -> T {
    r.expect("LLVM builder used without an insertion point")
}

impl<'a, 'ctx> Bpf<'a, 'ctx> {
    pub fn new(
        m: &'a ModuleCx<'ctx>,
        func: FunctionValue<'ctx>,
        sub: DISubprogram<'ctx>,
        sources: &'a xpol_lang::SourceMap,
        files: &'a std::collections::HashMap<xpol_lang::FileId, DIFile<'ctx>>,
    ) -> Self {
        let b = m.cx.create_builder();
        let entry = m.cx.append_basic_block(func, "entry");
        b.position_at_end(entry);
        Bpf { m, b, func, sub, scopes: Default::default(), entry, scratch: Default::default(), sources, files, located: Default::default(), omit_null_check: false, long_program: false, facts: Default::default(), cpu: Default::default(), anchor: Default::default(), current_span: Default::default(), stack_uses: Default::default() }
    }

    /// Attributes the instructions built from now on to `span` (a debug
    /// location, hence `.BTF.ext` line info).
    pub fn locate(&self, span: xpol_lang::Span) {
        let (line, col) = self.sources.get(span.file).line_col(span.start);
        let files = self.files;
        let (scope, inlined_at) = self.scope_for(span.file, || files[&span.file]);
        let loc = self.m.di.create_debug_location(self.m.cx, line, col, scope, inlined_at);
        self.b.set_current_debug_location(loc);
        self.located.borrow_mut().push(super::Located { file: span.file, line, col, span });
        self.current_span.set(Some(span));
    }

    pub fn i1(&self) -> IntType<'ctx> {
        self.m.cx.bool_type()
    }

    pub fn i64(&self) -> IntType<'ctx> {
        self.m.cx.i64_type()
    }

    pub fn c64(&self, v: u64) -> IntValue<'ctx> {
        self.i64().const_int(v, false)
    }

    pub fn c32(&self, v: u32) -> IntValue<'ctx> {
        self.m.cx.i32_type().const_int(u64::from(v), false)
    }

    pub fn c16(&self, v: u16) -> IntValue<'ctx> {
        self.m.cx.i16_type().const_int(u64::from(v), false)
    }

    pub fn c8(&self, v: u8) -> IntValue<'ctx> {
        self.m.cx.i8_type().const_int(u64::from(v), false)
    }

    /// The program's context argument (`struct xdp_md *` or `struct __sk_buff *`).
    pub fn ctx(&self) -> PointerValue<'ctx> {
        self.func.get_nth_param(0).expect("programs take a context").into_pointer_value()
    }

    /// The packet's bounds, read from the context again (after a helper
    /// that moves them, such as `bpf_xdp_adjust_head`). XDP only.
    pub fn xdp_bounds(&self) -> (PointerValue<'ctx>, PointerValue<'ctx>) {
        let ctx = self.ctx();
        let data = self.int_to_ptr(self.zext64(self.load_raw(ctx, 0, 4)));
        let end = self.int_to_ptr(self.zext64(self.load_raw(ctx, 4, 4)));
        (data, end)
    }

    pub fn bool(&self, v: bool) -> IntValue<'ctx> {
        self.i1().const_int(v as u64, false)
    }

    // ------------------------------------------------------------ debug info

    pub fn set_location(&self, scope: DIScope<'ctx>, line: u32, col: u32) {
        let loc = self.m.di.create_debug_location(self.m.cx, line, col, scope, None);
        if self.anchor.get().is_none() {
            self.anchor.set(Some(loc));
        }
        self.b.set_current_debug_location(loc);
    }

    /// The scope for code from `file`. LLVM 14 names, in each `.BTF.ext`
    /// line-info record, the file of the location's *subprogram*, not of
    /// its scope: code from another file than the program's (an
    /// `include`) gets a subprogram of that file of its own, inlined into
    /// the program, so that line info (ours and `bpftool`'s) names the
    /// right file.
    pub fn scope_for(&self, file: xpol_lang::FileId, difile: impl FnOnce() -> DIFile<'ctx>) -> (DIScope<'ctx>, Option<inkwell::debug_info::DILocation<'ctx>>) {
        if let Some((_, s, at)) = self.scopes.borrow().iter().find(|(f, _, _)| *f == file) {
            return (*s, *at);
        }
        let f = difile();
        let di = &self.m.di;
        let ty = di.create_subroutine_type(f, None, &[], DIFlags::ZERO);
        let name = format!("{}.{}", self.func.get_name().to_string_lossy(), file.0);
        let sub = di.create_function(self.m.di_cu.as_debug_info_scope(), &name, None, f, 1, ty, true, true, 1, DIFlags::ZERO, true);
        // Inlined where the program starts (its first `set_location`).
        let at = self.anchor.get().unwrap_or_else(|| di.create_debug_location(self.m.cx, 1, 1, self.sub.as_debug_info_scope(), None));
        let s = sub.as_debug_info_scope();
        self.scopes.borrow_mut().push((file, s, Some(at)));
        (s, Some(at))
    }

    // ------------------------------------------------------------ blocks

    pub fn block(&self, name: &str) -> BasicBlock<'ctx> {
        self.m.cx.append_basic_block(self.func, name)
    }

    pub fn at(&self, bb: BasicBlock<'ctx>) {
        self.b.position_at_end(bb);
    }

    pub fn br(&self, bb: BasicBlock<'ctx>) {
        ok(self.b.build_unconditional_branch(bb));
    }

    pub fn cond_br(&self, c: IntValue<'ctx>, t: BasicBlock<'ctx>, f: BasicBlock<'ctx>) {
        ok(self.b.build_conditional_branch(c, t, f));
    }

    /// A branch to `t` that is taken for nearly every packet (a well-formed
    /// header): `t` is laid out as the fall-through (see
    /// [`ModuleCx::lay_out_likely_fallthrough`]), so the common path runs
    /// without jumps.
    pub fn cond_br_likely(&self, c: IntValue<'ctx>, t: BasicBlock<'ctx>, f: BasicBlock<'ctx>) {
        self.cond_br_weighted(c, t, f, (2000, 1));
    }

    /// A branch to `t` that few packets take (a rule's condition: most
    /// packets pass most rules by): `f` is laid out as the fall-through.
    pub fn cond_br_unlikely(&self, c: IntValue<'ctx>, t: BasicBlock<'ctx>, f: BasicBlock<'ctx>) {
        self.cond_br_weighted(c, t, f, (1, 2000));
    }

    fn cond_br_weighted(&self, c: IntValue<'ctx>, t: BasicBlock<'ctx>, f: BasicBlock<'ctx>, (wt, wf): (u64, u64)) {
        let br = ok(self.b.build_conditional_branch(c, t, f));
        let cx = self.m.cx;
        let i32t = cx.i32_type();
        let weights = cx.metadata_node(&[cx.metadata_string("branch_weights").into(), i32t.const_int(wt, false).into(), i32t.const_int(wf, false).into()]);
        let _ = br.set_metadata(weights, cx.get_kind_id("prof"));
    }

    pub fn ret(&self, code: u64) {
        ok(self.b.build_return(Some(&self.m.cx.i32_type().const_int(code, false))));
    }

    /// Returns `code` from a path of its own (a rule that counted and
    /// decided). SimplifyCFG would otherwise merge every return into one
    /// block and sink what the returning blocks share (the counting) into
    /// it, so each rule's path would end in jumps to shared code whose
    /// address and return value are phis. A `nomerge` call of
    /// `llvm.sideeffect` (which emits no instruction) before the return
    /// stops the sinking.
    pub fn ret_apart(&self, code: u64) {
        self.no_sinking_past_here();
        self.ret(code);
    }

    /// Keeps the current block, which only passes values on to a join,
    /// from being folded into its predecessors. Where many edges carry the
    /// same values to a join (the fields a parser leaves absent on every
    /// way it gives up), they can then meet in this block first, and the
    /// join's phis get those values on one edge: set once here, not before
    /// every branch on the way (where each block that may give up would
    /// set them again).
    pub fn keep_block(&self) {
        self.no_sinking_past_here();
    }

    /// A `nomerge` call of `llvm.sideeffect`, which emits no instruction:
    /// SimplifyCFG sinks no instruction of this block past it into a block
    /// shared with others.
    fn no_sinking_past_here(&self) {
        let name = "llvm.sideeffect";
        let void = self.m.cx.void_type().fn_type(&[], false);
        let f = self.m.module.get_function(name).unwrap_or_else(|| self.m.module.add_function(name, void, None));
        let call = ok(self.b.build_call(f, &[], ""));
        let nomerge = inkwell::attributes::Attribute::get_named_enum_kind_id("nomerge");
        call.add_attribute(inkwell::attributes::AttributeLoc::Function, self.m.cx.create_enum_attribute(nomerge, 0));
    }

    pub fn ret_value(&self, v: IntValue<'ctx>) {
        let v = ok(self.b.build_int_truncate_or_bit_cast(v, self.m.cx.i32_type(), "ret"));
        ok(self.b.build_return(Some(&v)));
    }

    /// The block being filled.
    pub fn cur(&self) -> BasicBlock<'ctx> {
        self.b.get_insert_block().expect("builder positioned")
    }

    /// An SSA merge of integer values from predecessor blocks (cheaper for
    /// LLVM than a stack slot promoted later: policies have thousands).
    pub fn phi(&self, incoming: &[(IntValue<'ctx>, BasicBlock<'ctx>)]) -> IntValue<'ctx> {
        let phi = ok(self.b.build_phi(incoming[0].0.get_type(), "phi"));
        for (v, bb) in incoming {
            phi.add_incoming(&[(v, *bb)]);
        }
        phi.as_basic_value().into_int_value()
    }

    /// [`Bpf::phi`] of pointers (map values found on different paths).
    pub fn phi_ptr(&self, incoming: &[(PointerValue<'ctx>, BasicBlock<'ctx>)]) -> PointerValue<'ctx> {
        let phi = ok(self.b.build_phi(incoming[0].0.get_type(), "phi"));
        for (v, bb) in incoming {
            phi.add_incoming(&[(v, *bb)]);
        }
        phi.as_basic_value().into_pointer_value()
    }

    /// True when the current block already ends (after a verdict).
    pub fn terminated(&self) -> bool {
        self.b.get_insert_block().and_then(|bb| bb.get_terminator()).is_some()
    }

    /// A stack slot, placed in the entry block so that mem2reg promotes it.
    pub fn slot(&self, ty: impl BasicType<'ctx>, name: &str) -> PointerValue<'ctx> {
        let tmp = self.m.cx.create_builder();
        match self.entry.get_first_instruction() {
            Some(i) => tmp.position_before(&i),
            None => tmp.position_at_end(self.entry),
        }
        ok(tmp.build_alloca(ty, name))
    }

    /// A stack slot for an i64 or i1 local, initialised in the entry block.
    pub fn var(&self, init: IntValue<'ctx>, name: &str) -> PointerValue<'ctx> {
        let p = self.slot(init.get_type(), name);
        let tmp = self.m.cx.create_builder();
        // Initialise right after the slot, at the top of the entry block, so
        // that the initial value reaches every use.
        match p.as_instruction().and_then(|i| i.get_next_instruction()) {
            Some(next) => tmp.position_before(&next),
            None => tmp.position_at_end(self.entry),
        }
        ok(tmp.build_store(p, init));
        p
    }

    pub fn get(&self, p: PointerValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_load(p, "v")).into_int_value()
    }

    /// The packet length: `parsed` itself, or after [`Bpf::spill_facts`]
    /// a load from the facts map (the word after the slots).
    pub fn pkt_len(&self, parsed: IntValue<'ctx>) -> IntValue<'ctx> {
        let facts = self.facts.borrow();
        let Some(f) = facts.as_ref() else { return parsed };
        let v = self.load_raw(f.value, 8 * f.slots.len() as u64, 8);
        if let Some(i) = v.as_instruction() {
            let _ = i.set_volatile(true);
        }
        v
    }

    /// Reads a parsed fact: from its slot, or after [`Bpf::spill_facts`]
    /// from the facts map. A fact's first read there also emits its store,
    /// at the copy point: only the facts some rule reads are copied, so the
    /// parser's work for the others stays dead code LLVM removes.
    pub fn get_fact(&self, p: PointerValue<'ctx>) -> IntValue<'ctx> {
        let mut facts = self.facts.borrow_mut();
        let Some(f) = facts.as_mut() else { return self.get(p) };
        let Some(slot) = f.slots.iter_mut().find(|(slot, _, _)| *slot == p) else { return self.get(p) };
        let off = slot.1;
        if !slot.2 {
            slot.2 = true;
            let here = self.cur();
            self.b.position_before(&f.store_before);
            self.store_at(f.copy_to, off, self.zext64(self.get(p)));
            self.b.position_at_end(here);
        }
        let v = self.load_raw(f.value, off, 8);
        // Volatile: LLVM would otherwise forward the stored value, and the
        // parser's registers would reach the rules after all.
        if let Some(i) = v.as_instruction() {
            let _ = i.set_volatile(true);
        }
        let ty = p.get_type().get_element_type().into_int_type();
        if ty.get_bit_width() == 1 {
            self.cmp(IntPredicate::NE, v, self.c64(0))
        } else {
            v
        }
    }

    /// Copies the parsed facts (`slots`, each i1 or i64) into the one
    /// per-CPU value of `map` (each as a rule first reads it, see
    /// [`Bpf::get_fact`]); from then on [`Bpf::get_fact`] reads them there. Why: the verifier knows nothing of a map value's contents, so
    /// the rules after this point look the same to it whatever path the
    /// parser took (IPv4 or IPv6, which extension headers, VLAN depth) and
    /// it verifies them once instead of once per parser path; and the facts
    /// no longer stay live in registers across every rule (in a long
    /// program LLVM spilled them into ever more stack slots, past 512
    /// bytes). A failed lookup (impossible for key 0 of a one-entry array)
    /// returns `fallback`.
    ///
    /// The packet length goes there too, after the slots: rules compare it,
    /// and a register the verifier saw compared would differ between paths.
    pub fn spill_facts(&self, map: MapDef<'ctx>, slots: &[PointerValue<'ctx>], pkt_len: IntValue<'ctx>, fallback: u64) {
        let key = self.stack_buf(4, "key");
        let value = self.map_lookup(map, key);
        let missing = self.block("facts_missing");
        let found = self.block("facts");
        self.cond_br(self.is_null(value), missing, found);
        self.at(missing);
        self.ret(fallback);
        self.at(found);
        self.store_at(value, 8 * slots.len() as u64, pkt_len);
        let saved = self.slot(value.get_type(), "facts_ptr");
        let saved = self.launder(&self.b, saved);
        ok(self.b.build_store(saved, value));
        let rules = self.block("rules");
        self.br(rules);
        let store_before = found.get_terminator().expect("the copy block ends with a branch");
        self.at(rules);
        let slots = slots.iter().enumerate().map(|(i, &slot)| (slot, 8 * i as u64, false)).collect();
        *self.facts.borrow_mut() = Some(FactsInMap { copy_to: value, value, saved, slots, store_before });
    }

    /// From here on, the rules read the facts through the map value's
    /// address as reloaded from the stack (a volatile load, one
    /// instruction), not through one register kept from the lookup:
    /// LLVM would otherwise keep the address, and the address of each fact
    /// read, live across every rule of a long program, and register
    /// allocation over thousands of rules with dozens of such ranges grew
    /// quadratically, and spilled them (up to a fifth more instructions on
    /// rules that read many facts). Called at the start of every
    /// `lower::FACTS_RELOAD_RULES`-th rule and of each counting tail; the
    /// address read must dominate its uses.
    pub fn reload_facts_pointer(&self) {
        let mut facts = self.facts.borrow_mut();
        let Some(f) = facts.as_mut() else { return };
        let v = ok(self.b.build_load(f.saved, "facts")).into_pointer_value();
        if let Some(i) = v.as_instruction() {
            let _ = i.set_volatile(true);
        }
        f.value = v;
    }

    pub fn set(&self, p: PointerValue<'ctx>, v: IntValue<'ctx>) {
        ok(self.b.build_store(p, v));
    }

    // ------------------------------------------------------------ arithmetic

    pub fn and(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_and(a, b, "and"))
    }

    pub fn or(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_or(a, b, "or"))
    }

    pub fn not(&self, a: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_not(a, "not"))
    }

    pub fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_int_add(a, b, "add"))
    }

    pub fn sub(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_int_sub(a, b, "sub"))
    }

    pub fn mul(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_int_mul(a, b, "mul"))
    }

    pub fn udiv(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_int_unsigned_div(a, b, "div"))
    }

    pub fn urem(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_int_unsigned_rem(a, b, "rem"))
    }

    pub fn xor(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_xor(a, b, "xor"))
    }

    pub fn shl(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_left_shift(a, b, "shl"))
    }

    pub fn lshr(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_right_shift(a, b, false, "shr"))
    }

    pub fn cmp(&self, p: IntPredicate, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_int_compare(p, a, b, "cmp"))
    }

    pub fn eq(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        self.cmp(IntPredicate::EQ, a, b)
    }

    pub fn select(&self, c: IntValue<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_select(c, a, b, "sel")).into_int_value()
    }

    pub fn zext64(&self, v: IntValue<'ctx>) -> IntValue<'ctx> {
        if v.get_type().get_bit_width() == 64 {
            return v;
        }
        ok(self.b.build_int_z_extend(v, self.i64(), "zext"))
    }

    pub fn trunc(&self, v: IntValue<'ctx>, ty: IntType<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_int_truncate_or_bit_cast(v, ty, "trunc"))
    }

    /// Byte swap (`be16/be32/be64` on little-endian BPF).
    pub fn bswap(&self, v: IntValue<'ctx>) -> IntValue<'ctx> {
        let ty = v.get_type();
        let name = format!("llvm.bswap.i{}", ty.get_bit_width());
        let f = self.m.module.get_function(&name).unwrap_or_else(|| self.m.module.add_function(&name, ty.fn_type(&[ty.into()], false), None));
        ok(self.b.build_call(f, &[v.into()], "bswap")).try_as_basic_value().basic().expect("bswap returns a value").into_int_value()
    }

    /// Hides a value from LLVM's range analysis, so that a mask the verifier
    /// needs (to bound a packet offset) is not optimised away.
    pub fn opaque(&self, v: IntValue<'ctx>) -> IntValue<'ctx> {
        let ty = v.get_type();
        let asm = self.m.cx.create_inline_asm(ty.fn_type(&[ty.into()], false), String::new(), "=r,0".into(), true, false, None, false);
        let callable = CallableValue::try_from(asm).expect("inline asm is callable");
        ok(self.b.build_call(callable, &[v.into()], "opaque")).try_as_basic_value().basic().expect("asm returns a value").into_int_value()
    }

    // ------------------------------------------------------------ memory

    /// `data + off` for a variable offset, as one opaque register. LLVM
    /// would otherwise rebuild the address next to each load (address
    /// sinking), and the verifier gives every rebuilt `pkt + scalar` a new
    /// identity, so a bounds check on one would not cover the other.
    pub fn pkt_ptr(&self, data: PointerValue<'ctx>, off: IntValue<'ctx>) -> PointerValue<'ctx> {
        let p = self.ptr_add(data, off);
        let ty = p.get_type();
        let asm = self.m.cx.create_inline_asm(ty.fn_type(&[ty.into()], false), String::new(), "=r,0".into(), true, false, None, false);
        let callable = CallableValue::try_from(asm).expect("inline asm is callable");
        ok(self.b.build_call(callable, &[p.into()], "pkt")).try_as_basic_value().basic().expect("asm returns a value").into_pointer_value()
    }

    /// A packet pointer as an integer, to keep it in a fact slot.
    pub fn ptr_to_int(&self, p: PointerValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_ptr_to_int(p, self.i64(), "addr"))
    }

    /// The packet pointer [`Bpf::ptr_to_int`] kept.
    pub fn int_to_ptr(&self, v: IntValue<'ctx>) -> PointerValue<'ctx> {
        ok(self.b.build_int_to_ptr(v, self.m.i8_ptr(), "ptr"))
    }

    pub fn ptr_add(&self, p: PointerValue<'ctx>, off: IntValue<'ctx>) -> PointerValue<'ctx> {
        // SAFETY (of the LLVM IR, not Rust): every access through the result
        // is preceded by a bounds check against data_end.
        unsafe { ok(self.b.build_gep(p, &[off], "p")) }
    }

    /// Loads an integer of `bytes` bytes at `p + off`, as stored (no swap).
    pub fn load_raw(&self, p: PointerValue<'ctx>, off: u64, bytes: u32) -> IntValue<'ctx> {
        let ty = match bytes {
            1 => self.m.cx.i8_type(),
            2 => self.m.cx.i16_type(),
            4 => self.m.cx.i32_type(),
            _ => self.i64(),
        };
        let q = self.ptr_add(p, self.c64(off));
        let q = ok(self.b.build_pointer_cast(q, ty.ptr_type(AddressSpace::default()), "q"));
        let v = ok(self.b.build_load(q, "ld"));
        // Natural alignment gives one load instruction. Context fields must
        // be read whole; packet data may be misaligned, which the verifier
        // allows for packets (as for C code reading `iph->saddr`).
        if let Some(i) = v.into_int_value().as_instruction() {
            let _ = i.set_alignment(bytes);
        }
        v.into_int_value()
    }

    /// Loads a big-endian (network order) field of `bytes` bytes at `p + off`,
    /// zero-extended to i64 in host order.
    pub fn load_be(&self, p: PointerValue<'ctx>, off: u64, bytes: u32) -> IntValue<'ctx> {
        let raw = self.load_raw(p, off, bytes);
        let v = if bytes > 1 { self.bswap(raw) } else { raw };
        self.zext64(v)
    }

    /// `p + n <= end`: the bytes `p .. p+n` lie inside the packet.
    pub fn fits(&self, p: PointerValue<'ctx>, n: u64, end: PointerValue<'ctx>) -> IntValue<'ctx> {
        let q = self.ptr_add(p, self.c64(n));
        let qi = ok(self.b.build_ptr_to_int(q, self.i64(), "qi"));
        let ei = ok(self.b.build_ptr_to_int(end, self.i64(), "ei"));
        self.cmp(IntPredicate::ULE, qi, ei)
    }

    pub fn store_at(&self, base: PointerValue<'ctx>, off: u64, v: IntValue<'ctx>) {
        let q = self.ptr_add(base, self.c64(off));
        let q = ok(self.b.build_pointer_cast(q, v.get_type().ptr_type(AddressSpace::default()), "q"));
        let st = ok(self.b.build_store(q, v));
        // Stack accesses must be aligned for the verifier: declare the
        // alignment the offset really has, and LLVM splits the store.
        let size = v.get_type().get_bit_width() / 8;
        let align = (1u64 << off.trailing_zeros().min(3)).min(size as u64) as u32;
        let _ = st.set_alignment(if off == 0 { size } else { align });
    }

    /// Stores `v` into the frame at `off` from its start. The verifier
    /// reckons packet alignment with `NET_IP_ALIGN` (2) added, so that the
    /// IP header after 14 bytes of Ethernet is 4-aligned even where
    /// unaligned accesses are refused: declared so, a 32-bit field of the
    /// IP header is one store, which [`Bpf::store_at`] would split.
    pub fn store_frame_at(&self, data: PointerValue<'ctx>, off: u64, v: IntValue<'ctx>) {
        const NET_IP_ALIGN: u64 = 2;
        let q = self.ptr_add(data, self.c64(off));
        let q = ok(self.b.build_pointer_cast(q, v.get_type().ptr_type(AddressSpace::default()), "q"));
        let st = ok(self.b.build_store(q, v));
        let size = u64::from(v.get_type().get_bit_width() / 8);
        let align = (1u64 << (off + NET_IP_ALIGN).trailing_zeros().min(3)).min(size);
        let _ = st.set_alignment(align as u32);
    }

    /// A zeroed stack buffer of `n` bytes for map keys and values. Buffers
    /// are shared by purpose and size, so a caller must finish with one
    /// (its helper call made) before asking for the same one again.
    ///
    /// In a long program (`long_program`) thousands of rules share a
    /// buffer, and two things LLVM does with a buffer were quadratic in its
    /// uses: instcombine walks every user of a stack slot, through casts
    /// and offsets, each time one of them changes, to see whether the slot
    /// can go; and a store of a zero array becomes a store per byte that
    /// memcpyopt merges again into a memset, updating its memory SSA each
    /// time. There the buffer is used through one `i8*` made next to the
    /// slot through `llvm.launder.invariant.group` (the same address; the
    /// backend drops the call), so that the slot has one user, and zeroed
    /// with one store of its width or one memset (which the backend writes
    /// as the widest aligned stores).
    pub fn stack_buf(&self, n: u32, purpose: &'static str) -> PointerValue<'ctx> {
        let arr = self.m.i8().array_type(n.max(1));
        let p = *self.scratch.borrow_mut().entry((purpose, n)).or_insert_with(|| {
            self.stack_uses.borrow_mut().push((n, self.current_span.get()));
            let p = self.slot(arr, purpose);
            if let Some(i) = p.as_instruction() {
                let _ = i.set_alignment(8);
            }
            if !self.long_program {
                return p;
            }
            let tmp = self.m.cx.create_builder();
            match p.as_instruction().and_then(|i| i.get_next_instruction()) {
                Some(next) => tmp.position_before(&next),
                None => tmp.position_at_end(self.entry),
            }
            let raw = ok(tmp.build_pointer_cast(p, self.m.i8_ptr(), "slot"));
            self.launder(&tmp, raw)
        });
        if !self.long_program {
            ok(self.b.build_store(p, arr.const_zero()));
            return ok(self.b.build_pointer_cast(p, self.m.i8_ptr(), "buf"));
        }
        let n = n.max(1);
        if n.is_power_of_two() && n <= 8 {
            let word = self.m.cx.custom_width_int_type(std::num::NonZeroU32::new(n * 8).expect("n > 0")).expect("an integer type");
            self.store_at(p, 0, word.const_zero());
        } else {
            ok(self.b.build_memset(p, 8, self.m.i8().const_zero(), self.m.cx.i64_type().const_int(u64::from(n), false)));
        }
        p
    }

    /// `p` through `llvm.launder.invariant.group`, built with `b`: the same
    /// address (alias analysis sees through it; the backend drops the
    /// call), but a stack slot used only through it has one user for
    /// LLVM's passes that walk a slot's users (see [`Bpf::stack_buf`]).
    fn launder(&self, b: &Builder<'ctx>, p: PointerValue<'ctx>) -> PointerValue<'ctx> {
        let launder = inkwell::intrinsics::Intrinsic::find("llvm.launder.invariant.group")
            .and_then(|i| i.get_declaration(&self.m.module, &[p.get_type().into()]))
            .expect("LLVM has llvm.launder.invariant.group");
        ok(b.build_call(launder, &[p.into()], "laundered")).try_as_basic_value().basic().expect("returns a pointer").into_pointer_value()
    }

    // ------------------------------------------------------------ helpers and maps

    /// Calls kernel helper `id` (a call through a constant address, which
    /// the BPF backend turns into `call id`).
    pub fn helper_call(&self, id: u64, ret: IntType<'ctx>, args: &[BasicMetadataValueEnum<'ctx>]) -> IntValue<'ctx> {
        self.helper_call_any(id, ret.into(), args).into_int_value()
    }

    fn helper_call_any(&self, id: u64, ret: inkwell::types::BasicTypeEnum<'ctx>, args: &[BasicMetadataValueEnum<'ctx>]) -> BasicValueEnum<'ctx> {
        self.helper_call_with(&self.b, id, ret, args)
    }

    /// [`Bpf::helper_call`] through builder `b`.
    fn helper_call_with(&self, b: &Builder<'ctx>, id: u64, ret: inkwell::types::BasicTypeEnum<'ctx>, args: &[BasicMetadataValueEnum<'ctx>]) -> BasicValueEnum<'ctx> {
        let params: Vec<BasicMetadataTypeEnum<'ctx>> = args
            .iter()
            .map(|a| match a {
                BasicMetadataValueEnum::PointerValue(p) => p.get_type().into(),
                BasicMetadataValueEnum::IntValue(i) => i.get_type().into(),
                _ => self.i64().into(),
            })
            .collect();
        let fty = ret.fn_type(&params, false);
        let fptr = self.c64(id).const_to_pointer(fty.ptr_type(AddressSpace::default()));
        let callable = CallableValue::try_from(fptr).expect("a function pointer is callable");
        ok(b.build_call(callable, args, "call")).try_as_basic_value().basic().expect("helpers return a value")
    }

    fn map_ptr(&self, map: MapDef<'ctx>) -> PointerValue<'ctx> {
        ok(self.b.build_pointer_cast(map.global.as_pointer_value(), self.m.i8_ptr(), "map"))
    }

    /// `bpf_map_lookup_elem(map, key)`: a pointer to the value, or null.
    pub fn map_lookup(&self, map: MapDef<'ctx>, key: PointerValue<'ctx>) -> PointerValue<'ctx> {
        self.helper_call_any(helper::MAP_LOOKUP_ELEM, self.m.i8_ptr().into(), &[self.map_ptr(map).into(), key.into()]).into_pointer_value()
    }

    /// `bpf_map_update_elem(map, key, value, flags)`: 0, or a negated errno.
    /// `bpf_map_delete_elem`: 0, or `-ENOENT` when the key was not there.
    pub fn map_delete(&self, map: MapDef<'ctx>, key: PointerValue<'ctx>) -> IntValue<'ctx> {
        self.helper_call(helper::MAP_DELETE_ELEM, self.i64(), &[self.map_ptr(map).into(), key.into()])
    }

    pub fn map_update(&self, map: MapDef<'ctx>, key: PointerValue<'ctx>, value: PointerValue<'ctx>, flags: u64) -> IntValue<'ctx> {
        self.helper_call(helper::MAP_UPDATE_ELEM, self.i64(), &[self.map_ptr(map).into(), key.into(), value.into(), self.c64(flags).into()])
    }

    /// Counts a lost update at key `slot` of the per-CPU counters map when
    /// `ret`, what [`Bpf::map_update`] returned, is `-E2BIG`: the map was
    /// full and the key new. (`EEXIST`, from an insert that another CPU's
    /// insert of the same key beat, loses that increment as in bpftrace,
    /// but the map is not full.) An update that succeeds pays one compare,
    /// not taken; a lost one a lookup in the per-CPU array and an add.
    /// Not the CPU's block in global data, as the rules count: that would
    /// take about twice the code at every update of a map, for an event
    /// that is rare.
    pub fn count_if_map_full(&self, ret: IntValue<'ctx>, counters: Counters<'ctx>, slot: u32) {
        let full = self.block("map_full");
        let done = self.block("update_done");
        self.cond_br_unlikely(self.eq(ret, self.c64(E2BIG.wrapping_neg())), full, done);
        self.at(full);
        let key = self.stack_buf(4, "key");
        self.store_at(key, 0, self.m.cx.i32_type().const_int(u64::from(slot), false));
        let p = self.map_lookup(counters.map, key);
        let count = self.block("count_lost");
        self.br_if_null(p, done, count);
        self.at(count);
        self.add_u64_at(p, 0, self.c64(1), false);
        self.br(done);
        self.at(done);
    }

    /// `bpf_ringbuf_reserve(map, size, 0)` (Linux 5.8): room for a record
    /// of `size` bytes in ring buffer `map`, or null when it is full. The
    /// verifier then wants every way on to submit (or discard) it.
    pub fn ringbuf_reserve(&self, map: MapDef<'ctx>, size: u64) -> PointerValue<'ctx> {
        self.helper_call_any(helper::RINGBUF_RESERVE, self.m.i8_ptr().into(), &[self.map_ptr(map).into(), self.c64(size).into(), self.c64(0).into()]).into_pointer_value()
    }

    /// `bpf_ringbuf_submit(record, 0)`: hands a reserved record to the
    /// reader (woken up if it waits).
    pub fn ringbuf_submit(&self, record: PointerValue<'ctx>) {
        // The helper returns nothing; its r0 is never read.
        self.helper_call(helper::RINGBUF_SUBMIT, self.i64(), &[record.into(), self.c64(0).into()]);
    }

    pub fn is_null(&self, p: PointerValue<'ctx>) -> IntValue<'ctx> {
        ok(self.b.build_is_null(p, "isnull"))
    }

    /// Branches on whether a map lookup found nothing. Only the test-only
    /// fault `omit_null_check` skips the check (to prove that the
    /// verifier's complaint is mapped back to source).
    pub fn br_if_null(&self, p: PointerValue<'ctx>, null: BasicBlock<'ctx>, found: BasicBlock<'ctx>) {
        if self.omit_null_check {
            self.br(found);
        } else {
            self.cond_br_unlikely(self.is_null(p), null, found);
        }
    }

    /// Adds `v` to the u64 at `p + off`; atomically when the map is shared
    /// between CPUs.
    pub fn add_u64_at(&self, p: PointerValue<'ctx>, off: u64, v: IntValue<'ctx>, atomic: bool) {
        let q = self.ptr_add(p, self.c64(off));
        let q = ok(self.b.build_pointer_cast(q, self.i64().ptr_type(AddressSpace::default()), "q64"));
        if atomic {
            let rmw = ok(self.b.build_atomicrmw(AtomicRMWBinOp::Add, q, v, AtomicOrdering::Monotonic));
            // Volatile, so that LLVM keeps the add: when it proves `v` zero
            // it turns `atomicrmw add 0` into an atomic load, which the BPF
            // backend of LLVM 14 cannot select (a fatal error, not a panic).
            if let Some(i) = rmw.as_instruction() {
                i.set_volatile(true).expect("an atomicrmw is a memory access");
            }
        } else {
            let old = ok(self.b.build_load(q, "old")).into_int_value();
            let new = self.add(old, v);
            ok(self.b.build_store(q, new));
        }
    }

    /// Compare-and-exchange of the u64 at `p + off` (BPF_ATOMIC
    /// BPF_CMPXCHG, Linux 5.12): stores `new` there if it holds
    /// `expected`, in one atomic step; true when it did.
    pub fn atomic_cmpxchg(&self, p: PointerValue<'ctx>, off: u64, expected: IntValue<'ctx>, new: IntValue<'ctx>) -> IntValue<'ctx> {
        let q = self.ptr_add(p, self.c64(off));
        let q = ok(self.b.build_pointer_cast(q, self.i64().ptr_type(AddressSpace::default()), "q64"));
        let pair = ok(self.b.build_cmpxchg(q, expected, new, AtomicOrdering::Monotonic, AtomicOrdering::Monotonic));
        // The BPF instruction returns the value it found: compared here,
        // rather than with the pair's flag, so that what LLVM emits is the
        // instruction and one compare.
        let found = ok(self.b.build_extract_value(pair, 0, "found")).into_int_value();
        self.eq(found, expected)
    }

    /// An 8-byte load the compiler neither merges with nor moves across
    /// another CPU's atomic updates of the same word (a `volatile` load:
    /// one BPF load instruction, which is atomic for an aligned u64).
    pub fn load_u64_shared(&self, p: PointerValue<'ctx>, off: u64) -> IntValue<'ctx> {
        let v = self.load_u64_at(p, off);
        if let Some(i) = v.as_instruction() {
            let _ = i.set_volatile(true);
        }
        v
    }

    pub fn load_u64_at(&self, p: PointerValue<'ctx>, off: u64) -> IntValue<'ctx> {
        let q = self.ptr_add(p, self.c64(off));
        let q = ok(self.b.build_pointer_cast(q, self.i64().ptr_type(AddressSpace::default()), "q64"));
        ok(self.b.build_load(q, "u64")).into_int_value()
    }

    /// The CPU number (`bpf_get_smp_processor_id`, a u32 in a 64-bit
    /// register), read once at the end of the entry block: finding the
    /// CPU's block of counters then overlaps with parsing instead of
    /// following a rule's decision (about 0.3 ns less per counted packet
    /// on the benchmark machine, where the kernel inlines the helper as
    /// two dependent loads).
    fn cpu(&self) -> IntValue<'ctx> {
        if let Some(cpu) = self.cpu.get() {
            return cpu;
        }
        // A builder of its own, so that this one keeps its position and
        // debug location.
        let at_entry = self.m.cx.create_builder();
        at_entry.position_before(&self.entry.get_terminator().expect("the parser ends the entry block with a branch"));
        let cpu = self.helper_call_with(&at_entry, helper::GET_SMP_PROCESSOR_ID, self.i64().into(), &[]).into_int_value();
        self.cpu.set(Some(cpu));
        cpu
    }

    /// Bumps the counter pair `{packets, bytes}` of rule `index` (an i32)
    /// for this CPU: in its block in global data when it has one, else in
    /// the per-CPU array map.
    pub fn bump_counter(&self, counters: Counters<'ctx>, index: IntValue<'ctx>, bytes: IntValue<'ctx>) {
        let done = self.block("counted");
        if let Some(g) = counters.global {
            // One register for the check and the address: LLVM may keep the
            // CPU number on the stack across the rules, and older verifiers
            // (before about 6.9) forget the bound of an unbounded scalar
            // spilled and reloaded, so a reload for each use would leave
            // the address unbounded.
            let cpu = self.opaque(self.cpu());
            let in_global = self.block("count_global");
            let in_map = self.block("count_in_map");
            self.cond_br_likely(self.cmp(IntPredicate::ULT, cpu, self.c64(g.cpus)), in_global, in_map);
            self.at(in_global);
            let rule = self.mul(self.zext64(index), self.c64(16));
            let slot = self.ptr_add(g.base, self.add(self.mul(cpu, self.c64(g.stride)), rule));
            self.add_u64_at(slot, 0, self.c64(1), false);
            self.add_u64_at(slot, 8, bytes, false);
            // The map's way does the same adds: keep them apart, so that
            // this (common) way needs no jump to adds shared with it.
            self.no_sinking_past_here();
            self.br(done);
            self.at(in_map);
        }
        let key = self.stack_buf(4, "key");
        // A 4-byte store, the key's size: the verifier then recognises a
        // constant key (a spill of exactly the key's size).
        self.store_at(key, 0, index);
        let slot = self.map_lookup(counters.map, key);
        let bump = self.block("count");
        self.br_if_null(slot, done, bump);
        self.at(bump);
        self.add_u64_at(slot, 0, self.c64(1), false);
        self.add_u64_at(slot, 8, bytes, false);
        self.br(done);
        self.at(done);
    }
}
