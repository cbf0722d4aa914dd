//! `pregon demo` (filled in below).
use crate::app::AppError;
use crate::config::Config;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {}

pub async fn run(_config: Config, _args: DemoArgs) -> Result<(), AppError> {
    Ok(())
}
