//! CI's short fuzzing pass: every decoder of untrusted input gets 2,000 arbitrary and
//! mutated inputs with no panic and no allocation beyond the bound. The long run is
//! `otel-tail-fuzz --cases 100000`.

use otel_tail_integration_tests::fuzz::{self, MAX_CASE_ALLOCATION, PeakAlloc};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

#[test]
fn every_decoder_survives_arbitrary_and_mutated_input() {
    let targets = fuzz::targets();
    assert!(targets.len() >= 22, "a decoder lost its fuzz target");
    for mut target in targets {
        let report = target
            .run(2_000, 20261203)
            .unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(report.cases, 2_000);
        assert!(
            report.refused > 0,
            "{}: no input was refused, so mutations did not reach the decoder",
            report.name
        );
        assert!(
            report.accepted > 0,
            "{}: no input was accepted, so the seeds are not valid messages",
            report.name
        );
        assert!(
            report.max_case_allocation > 0 && report.max_case_allocation <= MAX_CASE_ALLOCATION,
            "{}: {} bytes",
            report.name,
            report.max_case_allocation
        );
    }
}
