//! Training: the optimizer, the learning-rate schedules and (later) the trainer that drives them.
pub mod optim;
pub mod schedule;
