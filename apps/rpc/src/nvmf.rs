//! nvmf methods, with rpc.py's argument forms (being written).

use clap::Subcommand;

use crate::{Request, Show};

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
pub enum Cmd {
    /// (placeholder until the nvmf methods land)
    #[command(hide = true, name = "__nvmf_placeholder")]
    Placeholder,
}

impl Cmd {
    pub fn request(&self) -> Request {
        match self {
            Cmd::Placeholder => Request { method: "__nvmf_placeholder", params: None, show: Show::Json },
        }
    }
}
