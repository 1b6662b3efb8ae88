//! Training: the optimizer, the learning-rate schedules, checkpoints and the trainer that drives them.
pub mod batches;
pub mod checkpoint;
pub mod cli;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod plots;
pub mod preference;
pub mod run_lock;
pub mod schedule;
pub mod step_update;
pub mod tensorboard;
pub mod trainer;
