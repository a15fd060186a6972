//! A one-reactor Pollux application on a thread of its own, for programs
//! that use Pollux's hosts and initiators as a library without the daemon
//! (the blocking client APIs). The reactor runs in interrupt mode, so it
//! sleeps while idle; its RPC socket lives in a private temporary
//! directory. Calls are messages to the reactor, answered through a
//! channel. The reactor runtime is the process's: one at a time.

use std::ffi::OsString;
use std::sync::mpsc;
use std::thread::JoinHandle;

use clap::Parser;

use crate::app::{self, App, AppArgs};
use crate::reactor::{self, Handle, ReactorId};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    app: AppArgs,
}

/// The answer sent back to a [`Background::call`].
pub type Reply<T> = Box<dyn FnOnce(T) + Send>;

pub struct Background {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Background {
    /// Start the application: `setup` registers what it serves (subsystems,
    /// methods) before it runs.
    pub fn start(name: &str, setup: impl FnOnce(&mut App) + Send + 'static) -> Result<Background, String> {
        let dir = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir().map_err(|e| e.to_string())?;
        let sock = dir.path().join("rpc.sock");
        let argv: Vec<OsString> =
            vec![name.into(), "-m".into(), "0x1".into(), "--no-pin".into(), "--interrupt-mode".into(), "-r".into(), sock.into_os_string()];
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?.app;
        let (htx, hrx) = mpsc::channel();
        let app_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut app = App::new(&app_name);
                setup(&mut app);
                let tx = htx.clone();
                app.on_started(move || {
                    let _ = tx.send(Ok(reactor::handle()));
                });
                if let Err(e) = app.run(args) {
                    let _ = htx.send(Err(e.to_string()));
                }
            })
            .map_err(|e| e.to_string())?;
        let handle = match hrx.recv() {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("{name}: the reactor ended before it started")),
        };
        Ok(Background { handle, thread: Some(thread), _dir: dir })
    }

    /// Run `f` on the reactor and wait for what it replies; None if the
    /// reactor has ended.
    pub fn call<T: Send + 'static>(&self, f: impl FnOnce(Reply<T>) + Send + 'static) -> Option<T> {
        let (tx, rx) = mpsc::channel();
        self.handle.send(ReactorId(0), move || {
            f(Box::new(move |r| {
                let _ = tx.send(r);
            }))
        });
        rx.recv().ok()
    }

    /// Stop the application and wait for its thread.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.send(ReactorId(0), || app::shutdown(0));
            let _ = t.join();
        }
    }

    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}
