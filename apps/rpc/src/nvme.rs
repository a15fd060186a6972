//! nvme methods, with rpc.py's argument forms (being written).

use clap::Subcommand;

use crate::{Request, Show};

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
pub enum Cmd {
    /// (placeholder until the nvme methods land)
    #[command(hide = true, name = "__nvme_placeholder")]
    Placeholder,
}

impl Cmd {
    pub fn request(&self) -> Request {
        match self {
            Cmd::Placeholder => Request { method: "__nvme_placeholder", params: None, show: Show::Json },
        }
    }
}
