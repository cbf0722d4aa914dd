//! `pregon bench` (filled in below).
use crate::app::AppError;
use crate::config::Config;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {}

pub async fn run(_config: Config, _args: BenchArgs) -> Result<(), AppError> {
    Ok(())
}
