//! Training: the optimizer, the learning-rate schedules, checkpoints and the trainer that drives them.
pub mod batches;
pub mod checkpoint;
pub mod optim;
pub mod plots;
pub mod preference;
pub mod schedule;
pub mod trainer;
