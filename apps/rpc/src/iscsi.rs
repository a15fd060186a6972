//! iscsi methods, with rpc.py's argument forms (being written).

use clap::Subcommand;

use crate::{Request, Show};

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
pub enum Cmd {
    /// (placeholder until the iscsi methods land)
    #[command(hide = true, name = "__iscsi_placeholder")]
    Placeholder,
}

impl Cmd {
    pub fn request(&self) -> Request {
        match self {
            Cmd::Placeholder => Request { method: "__iscsi_placeholder", params: None, show: Show::Json },
        }
    }
}
