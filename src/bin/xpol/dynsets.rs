//! Dynamic sets (docs/language.md, "Dynamic sets") in the `xpol`
//! commands: `xpol set NAME SET list|add|del|flush` on one of an applied
//! policy, and, for `xpol test`, the kernel's sets made to hold the
//! reference's before each case and compared with them after it.

use super::SetOp;
use anyhow::{bail, Context, Result};
use std::process::ExitCode;
use xpol_runtime::dynset::{parse_element, DynElement};
use xpol_runtime::loader::{KeyValue, PolicyMaps};
use xpol_runtime::store::Store;

/// `30s`, `10m`, `2h`, `1d` or a number of seconds, in nanoseconds.
fn timeout_ns(text: &str) -> Result<u64> {
    let (digits, scale) = match text.char_indices().last() {
        Some((i, 's')) => (&text[..i], 1),
        Some((i, 'm')) => (&text[..i], 60),
        Some((i, 'h')) => (&text[..i], 3600),
        Some((i, 'd')) => (&text[..i], 86_400),
        _ => (text, 1),
    };
    let secs = digits.parse::<u64>().ok().and_then(|v| v.checked_mul(scale)).filter(|&s| s > 0 && s <= 366 * 86_400);
    let secs = secs.with_context(|| format!("`{text}` is not a timeout: write e.g. `timeout 10m` (1 second to 366 days)"))?;
    Ok(secs * 1_000_000_000)
}

/// The JSON of a live element.
fn element_json(e: &DynElement) -> serde_json::Value {
    serde_json::json!({"element": e.key.to_string(), "left_s": e.left_ns.map(|ns| ns as f64 / 1e9)})
}

/// Whether `set` is a dynamic set of the applied policy `name`: then
/// `xpol set` acts on it here, with `op`.
pub fn is_dynamic(name: &str, set: &str) -> Result<bool> {
    let Some(store) = Store::read()? else { return Ok(false) };
    let applied = store.applied(name)?;
    Ok(applied.current.as_ref().is_some_and(|c| c.record.meta.dynsets.iter().any(|d| d.name == set)))
}

/// `xpol set NAME SET ...` on a dynamic set: each change is one map
/// update, as the programs' own are.
pub fn set(name: &str, set: &str, op: SetOp) -> Result<ExitCode> {
    let store = Store::read()?.with_context(|| format!("no policy is applied as `{name}` (see `xpol list`)"))?;
    let applied = store.applied(name)?;
    let current = applied.current.as_ref().with_context(|| format!("`{name}`: {}", applied.problems.join("; ")))?;
    let maps = current.maps()?;
    let d = maps.dynset_meta(set)?.clone();
    match op {
        SetOp::List { json } => {
            let elements = maps.dynset_elements(set)?;
            if json {
                let list: Vec<serde_json::Value> = elements.iter().map(element_json).collect();
                println!("{}", serde_json::json!({"schema": super::REPORT_SCHEMA, "policy": name, "set": set, "dynamic": true, "capacity": d.max_entries, "elements": list}));
            } else {
                for e in &elements {
                    println!("{}", e.describe());
                }
            }
        }
        SetOp::Add { elements } => {
            // `add KEY... [timeout D]`.
            let (keys, timeout) = match elements.iter().position(|e| e == "timeout") {
                Some(i) if i + 2 == elements.len() => (&elements[..i], Some(timeout_ns(&elements[i + 1])?)),
                Some(_) => bail!("`timeout D` comes last: `xpol set {name} {set} add ADDR timeout 10m`"),
                None => (&elements[..], None),
            };
            if keys.is_empty() {
                bail!("nothing to add: `xpol set {name} {set} add ADDR [timeout D]`");
            }
            let keys: Vec<KeyValue> = keys.iter().map(|k| parse_element(&d, k)).collect::<Result<_, _>>()?;
            for k in &keys {
                maps.dynset_add(set, k, timeout)?;
            }
            eprintln!("dynamic set `{set}` of `{name}`: {} added", keys.len());
        }
        SetOp::Del { elements } => {
            let keys: Vec<KeyValue> = elements.iter().map(|k| parse_element(&d, k)).collect::<Result<_, _>>()?;
            let mut absent = Vec::new();
            for k in &keys {
                if !maps.dynset_delete(set, k)? {
                    absent.push(k.to_string());
                }
            }
            if !absent.is_empty() {
                bail!("dynamic set `{set}` of `{name}` did not hold {}", absent.join(", "));
            }
            eprintln!("dynamic set `{set}` of `{name}`: {} deleted", keys.len());
        }
        SetOp::Flush => {
            let n = maps.dynset_flush(set)?;
            eprintln!("dynamic set `{set}` of `{name}`: {n} elements deleted");
        }
        SetOp::Replace { .. } => bail!("`{set}` is a dynamic set, which the packets fill: `add`, `del` or `flush` it"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A reference element as the runtime writes it (a MAC is an integer in
/// the reference).
fn key_value(kind: xpol_lang::meta::KeyKind, k: &xpol_compiler::reference::KeyPart) -> KeyValue {
    use xpol_compiler::reference::KeyPart;
    match (kind, k) {
        (xpol_lang::meta::KeyKind::Mac, KeyPart::Int(m)) => {
            let b = m.to_be_bytes();
            KeyValue::Mac([b[2], b[3], b[4], b[5], b[6], b[7]])
        }
        (_, KeyPart::Int(i)) => KeyValue::Int(*i),
        (_, KeyPart::Ip(a)) => KeyValue::Ip(*a),
        (_, KeyPart::Bool(b)) => KeyValue::Bool(*b),
    }
}

/// Before a test case: each kernel set holds the reference's live
/// elements with the time they have left (the kernel's clock cannot be
/// moved).
pub fn sync_to_kernel(maps: &PolicyMaps, ir: &xpol_compiler::ir::Policy, state: &xpol_compiler::reference::State) -> Result<()> {
    for (i, d) in ir.dynsets.iter().enumerate() {
        let kind = maps.dynset_meta(&d.name)?.key;
        let elements: Vec<(KeyValue, Option<u64>)> = xpol_compiler::reference::dynset::elements(i, state).iter().map(|(k, left)| (key_value(kind, k), *left)).collect();
        maps.dynset_set(&d.name, &elements)?;
    }
    Ok(())
}

/// After a test case: how the kernel's sets differ from the reference's,
/// an element in one only, or with another time left (by more than a
/// second: the clocks are read at different times, the kernel's in
/// jiffies).
pub fn differences(maps: &PolicyMaps, ir: &xpol_compiler::ir::Policy, state: &xpol_compiler::reference::State) -> Result<Vec<String>> {
    const SLACK_NS: u64 = 1_000_000_000;
    let mut out = Vec::new();
    for (i, d) in ir.dynsets.iter().enumerate() {
        let kind = maps.dynset_meta(&d.name)?.key;
        let kernel = maps.dynset_elements(&d.name)?;
        let reference: Vec<(KeyValue, Option<u64>)> = xpol_compiler::reference::dynset::elements(i, state).iter().map(|(k, left)| (key_value(kind, k), *left)).collect();
        for (k, left) in &reference {
            match kernel.iter().find(|e| e.key == *k) {
                None => out.push(format!("dynamic set `{}`: the reference holds {k}, the kernel does not", d.name)),
                Some(e) if e.left_ns.is_some() != left.is_some() || e.left_ns.unwrap_or(0).abs_diff(left.unwrap_or(0)) > SLACK_NS => {
                    out.push(format!("dynamic set `{}`: the kernel's {} has {:?} ns left, the reference's {left:?}", d.name, k, e.left_ns))
                }
                Some(_) => {}
            }
        }
        for e in kernel.iter().filter(|e| !reference.iter().any(|(k, _)| *k == e.key)) {
            out.push(format!("dynamic set `{}`: the kernel holds {}, the reference does not", d.name, e.key));
        }
    }
    Ok(out)
}
