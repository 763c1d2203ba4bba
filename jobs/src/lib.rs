//! # sluice-jobs
//!
//! Batch jobs over the lake (erasure, anonymisation, snapshots, maintenance, gold), run by
//! `sluice job` or the scheduler. They arrive with the batch-jobs work (issue 5).
