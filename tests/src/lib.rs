//! End-to-end tests live in `tests/e2e.rs`: they start real `fifty` and `fifty-agent` processes
//! (built beforehand by `scripts/test`) through `fifty::local::LocalCluster`.
