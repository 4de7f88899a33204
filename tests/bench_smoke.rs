//! The benchmark in quick mode: every program gives the reference verdicts
//! and the report is written. Nothing about time is asserted.

#[path = "../benches/ref_fw.rs"]
mod ref_fw;

#[test]
fn ref_fw_quick() {
    if !xpol_runtime::testing::kernel_or_skip("ref_fw_quick") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let table = ref_fw::run(true, out.path());
    assert!(table.contains("C, LPM_TRIE") && table.contains("xpol, `set` (map)"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("ref-fw.json")).expect("json")).expect("valid");
    assert_eq!(json["results"].as_array().expect("results").len(), 11);
}
