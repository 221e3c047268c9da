use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

#[test]
fn lines_of_one_template_share_an_id_and_generalize() {
    let mut miner = TemplateMiner::default();
    let first = miner.add("Received block blk_123 of size 67108864 from /10.250.19.102");
    assert!(first.is_new);
    let id = first.id;
    let second = miner.add("Received block blk_-987 of size 512 from /10.251.73.220");
    assert!(!second.is_new);
    assert_eq!(second.id, id);
    assert_eq!(
        second.template,
        "Received block blk_<*> of size <*> from /<*>"
    );
    let third = miner.add("Received block blk_5 of size 9 from /10.0.0.1 user alice");
    assert_ne!(
        third.id, id,
        "different token count is a different template"
    );
    let fourth = miner.add("Session opened for user 1001").id;
    let fifth = miner.add("Session opened for user 1002").id;
    assert_eq!(fourth, fifth);
    assert_eq!(miner.template(fourth), Some("Session opened for user <*>"));
    assert_eq!(miner.len(), 3);
}

#[test]
fn id_is_stable_when_the_template_generalizes() {
    let mut miner = TemplateMiner::default();
    let id = miner.add("connected to db-1 on port 5432").id;
    miner.add("connected to 10.0.0.2 on port 6432");
    assert_eq!(miner.template(id), Some("connected to <*> on port <*>"));
    let templates: Vec<_> = miner.templates().collect();
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0].id, id);
    assert_eq!(templates[0].count, 2);
}

#[test]
fn dissimilar_lines_get_separate_templates() {
    let mut miner = TemplateMiner::default();
    let a = miner.add("disk full on volume data").id;
    let b = miner.add("user logged out after timeout").id;
    assert_ne!(a, b);
    assert_eq!(miner.len(), 2);
}

#[test]
fn a_different_word_starts_a_new_template_however_similar_the_rest() {
    let mut miner = TemplateMiner::default();
    // Variables join whatever they are; a different word is another event, even when 11
    // of 12 positions agree.
    let bytes = miner
        .add("Block broadcast_1 stored as bytes in memory (estimated size 5.2 KB, free 300 MB)")
        .id;
    let values = miner
        .add("Block broadcast_2 stored as values in memory (estimated size 8 KB, free 290.1 MB)");
    assert!(values.is_new);
    assert_eq!(
        values.template,
        "Block broadcast_<*> stored as values in memory (estimated size <*>, free <*>)"
    );
    let again = miner.add("Block rdd_3 stored as bytes in memory (estimated size 1 B, free 2 GB)");
    assert_eq!(again.id, bytes);
    assert_eq!(
        again.template,
        "Block <*> stored as bytes in memory (estimated size <*>, free <*>)"
    );
    // Words differing only in punctuation are the same word: the position generalizes.
    let looking = miner.add("peer 1 in state LOOKING,").id;
    let leading = miner.add("peer 2 in state LEADING,").id;
    assert_ne!(leading, looking);
    assert_eq!(miner.add("peer 3 in state LOOKING.").id, looking);
    assert_eq!(miner.template(looking), Some("peer <*> in state LOOKING,"));
}

#[test]
fn a_word_position_generalizes_once_word_variants_templates_share_the_frame() {
    let mut miner = TemplateMiner::new(MinerConfig {
        word_variants: 3,
        ..MinerConfig::default()
    });
    let users = ["alice", "bob", "carol", "dave", "erin"];
    let ids: Vec<TemplateId> = users
        .iter()
        .map(|u| {
            miner
                .add(&format!("session opened for user {u} from 10.0.0.1"))
                .id
        })
        .collect();
    // Three users get templates of their own; the fourth finds three templates that would
    // take it but for the user, so the user is a variable and the most similar (the
    // oldest on a tie) absorbs it; later users join that template.
    assert_eq!(miner.len(), 3);
    assert_eq!(&ids[3..], [ids[0], ids[0]]);
    assert_eq!(
        miner.template(ids[0]),
        Some("session opened for user <*> from <*>")
    );
    assert_eq!(
        miner.template(ids[1]),
        Some("session opened for user bob from <*>")
    );
}

#[test]
fn full_miner_overflows_then_evicts_idle_templates() {
    let config = MinerConfig {
        max_templates: 2,
        min_idle_lines: 3,
        ..MinerConfig::default()
    };
    let mut miner = TemplateMiner::new(config);
    let a = miner.add("alpha one").id;
    miner.add("beta two words");
    let over = miner.add("gamma three words here");
    assert!(over.overflow);
    assert_eq!(over.id, OVERFLOW_TEMPLATE_ID);
    assert_eq!(over.template, OVERFLOW_TEMPLATE);
    assert_eq!(miner.len(), 2);
    assert_eq!(miner.overflow_count(), 1);
    // "alpha one" has now been idle for 3 lines: it makes room.
    let delta = miner.add("delta four words here too");
    assert!(delta.is_new && !delta.overflow);
    assert_eq!(miner.template(a), None);
    assert_eq!(miner.len(), 2);
    // The most recently matched template survived.
    assert!(miner.templates().any(|t| t.template == "beta two words"));
}

#[test]
fn evicted_template_frees_its_tree_branch() {
    let config = MinerConfig {
        max_templates: 1,
        min_idle_lines: 1,
        max_children: 1,
        ..MinerConfig::default()
    };
    let mut miner = TemplateMiner::new(config);
    miner.add("alpha beta gamma");
    // Evicts "alpha…"; "omega" gets a branch of its own since the node is empty again.
    let omega = miner.add("omega beta gamma");
    assert!(omega.is_new);
    let omega = omega.id;
    assert_eq!(miner.add("omega beta gamma").id, omega);
    assert_eq!(miner.len(), 1);
}

#[test]
fn max_children_sends_further_prefixes_to_the_wildcard_branch() {
    // One word variant suffices to merge, so lines that share a leaf show it.
    let config = MinerConfig {
        max_children: 2,
        word_variants: 1,
        ..MinerConfig::default()
    };
    let mut miner = TemplateMiner::new(config);
    miner.add("alice logged in from home");
    miner.add("bob logged in from home");
    let carol = miner.add("carol logged in from home").id;
    let dave = miner.add("dave logged in from home").id;
    assert_eq!(carol, dave, "both land in the wildcard branch and merge");
    assert_eq!(miner.len(), 3);
}

#[test]
fn ids_are_deterministic_across_miners() {
    let lines = [
        "worker 1 started",
        "worker 2 started",
        "job abc failed: timeout",
        "job def failed: timeout",
    ];
    let mut a = TemplateMiner::default();
    let mut b = TemplateMiner::default();
    for line in lines {
        assert_eq!(a.add(line).id, b.add(line).id);
    }
}

#[test]
fn template_ids_survive_a_restart() {
    // Before and after a restart the miner sees other values, in another order; every
    // template gets the same id, the hash of its masked text, which persists across
    // versions as long as the masking of that text does.
    let before = [
        "Received block blk_1 of size 67108864 from /10.250.19.102:50010",
        "worker 7 started in 12 ms",
        "session opened for user root by (uid=0)",
        "Received block blk_-42 of size 512 from /10.251.73.220:50010",
        "GET /api/v1/orders/17 took 3.5 s",
    ];
    let after = [
        "GET /api/v1/users/9 took 120 ms",
        "session opened for user root by (uid=1000)",
        "worker 12 started in 1.5 s",
        "Received block blk_99 of size 1 from /10.0.0.1:1",
    ];
    let mut first = TemplateMiner::default();
    let ids: HashMap<String, TemplateId> = before
        .iter()
        .map(|line| {
            let m = first.add(line);
            (m.template.to_owned(), m.id)
        })
        .collect();
    let mut restarted = TemplateMiner::default();
    for line in after {
        let m = restarted.add(line);
        assert!(m.is_new);
        assert_eq!(ids.get(m.template), Some(&m.id), "{line}");
        assert_eq!(
            m.id,
            TemplateId(xxhash_rust::xxh3::xxh3_64(m.template.as_bytes())),
            "the id is the xxh3 of the template text"
        );
    }
    assert_eq!(restarted.len(), 4);
}

#[test]
fn rollup_groups_by_resource_severity_and_template() {
    let mut rollup = LogRollup::default();
    rollup.add(b"svc-a", 9, "request 1 served in 5 ms", 300);
    rollup.add(b"svc-a", 9, "request 2 served in 7 ms", 100);
    rollup.add(b"svc-a", 17, "request 3 served in 9 ms", 200);
    rollup.add(b"svc-b", 9, "request 4 served in 1 ms", 50);
    let summaries = rollup.drain();
    assert_eq!(summaries.len(), 3);
    let a_info = summaries
        .iter()
        .find(|s| s.resource_key == b"svc-a" && s.severity == 9)
        .unwrap();
    assert_eq!(a_info.count, 2);
    assert_eq!(a_info.first_time_unix_nano, 100);
    assert_eq!(a_info.last_time_unix_nano, 300);
    assert_eq!(a_info.template, "request <*> served in <*>");
    assert_eq!(a_info.samples, ["request 1 served in 5 ms"]);
    assert!(!a_info.overflow);
    assert!(rollup.drain().is_empty(), "a drained interval starts empty");
}

#[test]
fn rollup_reports_the_generalized_template_and_bounded_samples() {
    let mut rollup = LogRollup::new(LogRollupOptions {
        samples_per_template: 2,
        ..LogRollupOptions::default()
    });
    for user in ["u1", "u22", "u333", "u4444"] {
        rollup.add(b"svc", 9, &format!("login ok for user {user}"), 1);
    }
    let summaries = rollup.drain();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].template, "login ok for user <*>");
    assert_eq!(summaries[0].count, 4);
    assert_eq!(
        summaries[0].samples,
        ["login ok for user u1", "login ok for user u22"]
    );
}

#[test]
fn resources_past_the_bound_share_a_miner_but_keep_their_summaries() {
    let mut rollup = LogRollup::new(LogRollupOptions {
        max_resources: 1,
        ..LogRollupOptions::default()
    });
    let own = rollup.add(b"first", 9, "cache warmed in 12 ms", 1);
    let shared_b = rollup.add(b"second", 9, "cache warmed in 13 ms", 2);
    let shared_c = rollup.add(b"third", 9, "cache warmed in 14 ms", 3);
    assert_eq!(own, shared_b, "same text, same id, whichever miner");
    assert_eq!(shared_b, shared_c);
    let summaries = rollup.drain();
    let keys: Vec<&[u8]> = summaries
        .iter()
        .map(|s| s.resource_key.as_slice())
        .collect();
    assert_eq!(keys, [&b"first"[..], b"second", b"third"]);
}

/// Random lines from a few shapes with random words and numbers.
fn line_strategy() -> impl Strategy<Value = String> {
    let word = prop::sample::select(vec!["alpha", "beta", "gamma", "delta", "error", "user"]);
    (0usize..5, word, 0u32..100_000, "[a-z]{0,6}", 0usize..12).prop_map(
        |(shape, w, n, free, len)| match shape {
            0 => format!("request {n} served by {w}"),
            1 => format!("{w} failed with code {n} {free}"),
            2 => format!("{free} {w} {free}"),
            3 => (0..len)
                .map(|i| format!("t{}", i % 3))
                .collect::<Vec<_>>()
                .join(" "),
            _ => format!("{free}={n} {w}"),
        },
    )
}

proptest! {
    #[test]
    fn counts_per_template_add_up_to_the_input(
        lines in prop::collection::vec((line_strategy(), 0usize..3, 1i32..24, 0u64..1_000), 0..300),
        max_templates in 1usize..8,
        samples in 0usize..3,
    ) {
        let mut rollup = LogRollup::new(LogRollupOptions {
            miner: MinerConfig { max_templates, min_idle_lines: 5, ..MinerConfig::default() },
            samples_per_template: samples,
            max_resources: 2,
        });
        let mut expected: HashMap<(Vec<u8>, i32), u64> = HashMap::new();
        let mut per_id: HashMap<(Vec<u8>, i32, TemplateId), u64> = HashMap::new();
        for (line, resource, severity, time) in &lines {
            let key = format!("svc-{resource}").into_bytes();
            let id = rollup.add(&key, *severity, line, *time);
            *expected.entry((key.clone(), *severity)).or_default() += 1;
            *per_id.entry((key, *severity, id)).or_default() += 1;
        }
        let summaries = rollup.drain();
        let total: u64 = summaries.iter().map(|s| s.count).sum();
        prop_assert_eq!(total, lines.len() as u64);
        let mut got: HashMap<(Vec<u8>, i32), u64> = HashMap::new();
        for s in &summaries {
            prop_assert!(s.samples.len() <= samples);
            prop_assert!(s.count > 0);
            prop_assert!(s.first_time_unix_nano <= s.last_time_unix_nano);
            prop_assert_eq!(s.overflow, s.template_id == OVERFLOW_TEMPLATE_ID);
            prop_assert_eq!(
                per_id.get(&(s.resource_key.clone(), s.severity, s.template_id)).copied(),
                Some(s.count)
            );
            *got.entry((s.resource_key.clone(), s.severity)).or_default() += s.count;
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn miner_is_deterministic_and_bounded(
        lines in prop::collection::vec(line_strategy(), 0..300),
        max_templates in 1usize..6,
    ) {
        let config = MinerConfig { max_templates, min_idle_lines: 3, ..MinerConfig::default() };
        let mut a = TemplateMiner::new(config.clone());
        let mut b = TemplateMiner::new(config);
        let mut overflowed = 0;
        for line in &lines {
            let (ma, mb) = (a.add(line), b.add(line));
            prop_assert_eq!(ma.id, mb.id);
            prop_assert_eq!(ma.template, mb.template);
            overflowed += u64::from(ma.overflow);
            prop_assert!(a.len() <= max_templates);
        }
        prop_assert_eq!(a.overflow_count(), overflowed);
        let counted: u64 = a.templates().map(|t| t.count).sum();
        prop_assert!(counted + overflowed <= lines.len() as u64);
    }
}
