//! "Did you mean": the known word closest to a misspelt one.

/// The candidate closest to `word`, if it is close enough to be a
/// misspelling of it: at most one edit per three characters of `word` (at
/// least one), fewer edits than the candidate has characters. Distance is
/// the optimal string alignment distance (`strsim::osa_distance`), in which
/// two neighbours swapped (`dorp`, `xpd`) count as one edit. Ties go to the
/// earlier candidate; a word equal to a candidate (in any case) gets that
/// candidate.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = word.chars().count();
    if len < 2 {
        return None;
    }
    let limit = (len / 3).max(1);
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (if c.eq_ignore_ascii_case(word) { 0 } else { strsim::osa_distance(&lower, &c.to_ascii_lowercase()).max(1) }, c))
        .filter(|&(d, c)| d <= limit && d < c.chars().count() && c != word)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn swaps_and_typos_find_their_word() {
        let verdicts = ["pass", "drop", "tx", "abort"];
        assert_eq!(closest("dorp", verdicts), Some("drop"));
        assert_eq!(closest("DROP", verdicts), Some("drop"));
        assert_eq!(closest("pas", verdicts), Some("pass"));
        assert_eq!(closest("xpd", ["xdp", "tc:ingress"]), Some("xdp"));
        assert_eq!(closest("tc:ingres", ["xdp", "tc:ingress", "tc:egress"]), Some("tc:ingress"));
        assert_eq!(closest("tcp.dprot", ["tcp.dport", "udp.dport"]), Some("tcp.dport"));
    }

    #[test]
    fn unrelated_words_find_nothing() {
        assert_eq!(closest("banana", ["pass", "drop"]), None);
        assert_eq!(closest("x", ["tx"]), None, "one letter says too little");
        assert_eq!(closest("drop", ["drop"]), None, "the word itself is not a suggestion");
    }
}
