//! pollux-nvme over NVMe-oF TCP, through the host library
//! (`pollux-nvmf-host`). That library runs on Pollux's reactors, so each
//! command starts a one-reactor application, does its work from the
//! application's start hook (connect, the admin commands, CC.SHN,
//! disconnect), hands the outcome back and shuts the application down.
//! The application's RPC socket, which every Pollux application serves,
//! lives in a private temporary directory removed afterwards.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use pollux_core::app::{self, App, AppArgs};
use pollux_nvme_spec::cmd::{Command, admin};
use pollux_nvmf_host::HostError;
use pollux_nvmf_host::ctrlr::{self, ConnectOptions, Controller};
use pollux_nvmf_host::discovery::{self, Log};
use pollux_nvmf_host::qpair::{AdminDone, Fabric, Qpair};

/// The port of an NVMe/TCP subsystem when none is given (IANA's NVMe/TCP port).
pub const SUBSYSTEM_PORT: u16 = 4420;
/// The port of a discovery controller when none is given (IANA's NVMe/TCP
/// discovery port).
pub const DISCOVERY_PORT: u16 = 8009;
/// The host library's name for the controller, in its log lines.
const NAME: &str = "pollux-nvme";

/// A remote subsystem's controller, and who the host says it is.
#[derive(Clone, Debug)]
pub struct Remote {
    pub fabric: Fabric,
    pub addr: SocketAddr,
    pub subnqn: String,
    /// The host NQN to connect as; `None`: a random one.
    pub hostnqn: Option<String>,
}

impl Remote {
    fn options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new(self.addr, &self.subnqn);
        o.fabric = self.fabric;
        if let Some(h) = &self.hostnqn {
            o.hostnqn = h.clone();
        }
        o
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.subnqn, self.addr)
    }
}

/// How work on the reactor hands its outcome back.
type Done<T> = Box<dyn FnOnce(Result<T>)>;

/// The options of the application the commands run in, parsed like any
/// Pollux application's (so options added later keep their defaults).
#[derive(Parser)]
struct ReactorArgs {
    #[command(flatten)]
    app: AppArgs,
}

/// Run `work` on a one-reactor application and return what it passes to
/// its `done`. The reactor runs on this thread, so the outcome needs no
/// lock.
fn on_reactor<T: 'static>(work: impl FnOnce(Done<T>) + 'static) -> Result<T> {
    let dir = tempfile::Builder::new().prefix("pollux-nvme-").tempdir().context("cannot make a directory for the RPC socket")?;
    // Not pinned, so any CPU the process may use will do; the first one
    // names the reactor's core. In interrupt mode, waiting on the network
    // (a connect timeout) sleeps instead of spinning that core.
    let cpu = pollux_core::sys::allowed_cpus().context("cannot read this process's CPU affinity")?.first().copied().unwrap_or(0);
    let mut argv: Vec<OsString> =
        ["pollux-nvme", "-m", &format!("[{cpu}]"), "--no-pin", "--interrupt-mode", "-r"].map(OsString::from).into();
    argv.push(dir.path().join("rpc.sock").into_os_string());
    let args = ReactorArgs::try_parse_from(argv).context("application options")?.app;

    let outcome: Rc<RefCell<Option<Result<T>>>> = Rc::new(RefCell::new(None));
    let slot = outcome.clone();
    let mut reactor_app = App::new(NAME);
    reactor_app.on_started(move || {
        work(Box::new(move |r| {
            *slot.borrow_mut() = Some(r);
            app::shutdown(0);
        }))
    });
    let code = reactor_app.run(args).context("cannot start the reactor")?;
    drop(dir);
    outcome.take().unwrap_or_else(|| Err(anyhow!("stopped before the command finished (exit code {code})")))
}

/// Bring the controller at `r` up, run `op` on its admin queue pair, then
/// shut the controller down (CC.SHN) and disconnect, whatever `op`'s
/// outcome.
fn session<T: 'static>(r: &Remote, op: impl FnOnce(&Arc<Controller>, &Rc<Qpair>, Done<T>) + 'static) -> Result<T> {
    let opts = r.options();
    on_reactor(move |done: Done<T>| {
        ctrlr::connect(NAME, opts, 1, move |up| {
            let (ctrl, qp) = match up {
                Ok(up) => up,
                Err(e) => return done(Err(e.into())),
            };
            let admin_qp = qp.clone();
            op(
                &ctrl,
                &qp,
                Box::new(move |res| {
                    // A queue pair that failed cannot carry the shutdown;
                    // `res` already says why.
                    if admin_qp.is_closed() {
                        return done(res);
                    }
                    let q = admin_qp.clone();
                    ctrlr::shutdown(&admin_qp, move |shut| {
                        if let Err(e) = shut {
                            eprintln!("pollux-nvme: warning: shutting the controller down: {e}");
                        }
                        q.close();
                        done(res);
                    });
                }),
            );
        });
    })
}

/// Bring the controller up and return it: its Identify Controller data
/// and its active namespaces.
pub fn open(r: &Remote) -> Result<Arc<Controller>> {
    session(r, |ctrl, _, done| done(Ok(ctrl.clone())))
}

/// Send the admin command `build` makes from the controller (reading
/// that many bytes from it): the controller and the command's completion
/// and data. A status other than success is an error naming the command.
pub fn admin(r: &Remote, build: impl FnOnce(&Controller) -> (Command, usize) + 'static) -> Result<(Arc<Controller>, AdminDone)> {
    session(r, move |ctrl, qp, done| {
        let (cmd, len) = build(ctrl);
        let opcode = cmd.opcode;
        let ctrl = ctrl.clone();
        qp.admin(
            cmd,
            vec![0; len],
            len > 0,
            Box::new(move |r| {
                done(
                    r.and_then(|a| {
                        let status = a.cqe.status();
                        if status.is_success() { Ok((ctrl, a)) } else { Err(HostError::Status(admin::name(opcode).to_string(), status)) }
                    })
                    .map_err(Into::into),
                )
            }),
        );
    })
}

/// Read the whole discovery log of the discovery controller at `addr`.
pub fn discover(fabric: Fabric, addr: SocketAddr, hostnqn: Option<String>) -> Result<Log> {
    let opts = Remote { fabric, addr, subnqn: pollux_nvme_spec::fabrics::DISCOVERY_NQN.to_string(), hostnqn }.options();
    on_reactor(move |done: Done<Log>| discovery::discover(NAME, opts, move |r| done(r.map_err(Into::into))))
}
