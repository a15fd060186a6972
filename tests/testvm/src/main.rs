//! `pollux-testvm setup` prepares the test VM cache; `pollux-testvm run -- CMD...`
//! runs a command in a fresh guest and exits with the command's status.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use pollux_testvm::{GuestCommand, NvmeDriver, SetupOptions, TestVm, VmConfig};

/// Exit status when the VM itself failed (not the command).
const INFRA_EXIT: u8 = 125;

#[derive(Parser)]
#[command(name = "pollux-testvm", about = "QEMU test guest with emulated NVMe behind an IOMMU")]
struct Cli {
    /// Cache folder [default: $POLLUX_TESTVM_CACHE or <repo>/.testvm-cache]
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages, fetch the guest kernel, build the initramfs,
    /// then boot a guest once to check it.
    Setup {
        /// Do not install missing Debian packages; fail instead.
        #[arg(long)]
        no_install: bool,
        /// Rebuild even if the cache is complete.
        #[arg(long)]
        force: bool,
        /// Skip the boot check at the end.
        #[arg(long)]
        no_check: bool,
    },
    /// Run a command in a fresh guest; exits with its status (125 if the VM failed).
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Number of emulated NVMe controllers.
    #[arg(long, default_value_t = 1)]
    controllers: u32,
    /// Namespaces per controller.
    #[arg(long, default_value_t = 1)]
    namespaces: u32,
    /// Size of each namespace in MiB.
    #[arg(long, default_value_t = 256)]
    namespace_mib: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// 2 MiB hugepages reserved at boot.
    #[arg(long, default_value_t = 0)]
    hugepages: u32,
    /// User-mode networking (guest 10.0.2.15; the host's 127.0.0.1 is 10.0.2.2).
    #[arg(long)]
    net: bool,
    /// Bind the NVMe controllers to vfio-pci instead of the kernel nvme driver.
    #[arg(long)]
    vfio: bool,
    /// Seconds before QEMU is killed.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Print the guest console after the run.
    #[arg(long)]
    console: bool,
    /// The command and its arguments (after `--`).
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pollux-testvm: {e:#}");
            ExitCode::from(INFRA_EXIT)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let cache = cli.cache.unwrap_or_else(pollux_testvm::default_cache_dir);
    match cli.command {
        Cmd::Setup { no_install, force, no_check } => {
            let start = Instant::now();
            let opts = SetupOptions { cache_dir: cache.clone(), install_packages: !no_install, force };
            let c = pollux_testvm::setup(&opts).context("setting up the test VM")?;
            eprintln!("pollux-testvm: set up kernel {} in {} ({:.1} s)", c.kernel_version, c.dir.display(), start.elapsed().as_secs_f64());
            if !no_check {
                let vm = TestVm::with_cache(VmConfig::new().controllers(1), &cache)?.quiet();
                let out = vm.run(&GuestCommand::new("uname").arg("-r"))?;
                let release = out.stdout_lossy();
                if !out.success() || release.trim() != c.kernel_version {
                    bail!("boot check: `uname -r` in the guest gave {:?} (status {})", release, out.status);
                }
                eprintln!("pollux-testvm: boot check passed: guest runs {} ({:.1} s)", release.trim(), out.timing.total.as_secs_f64());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run(args) => run(args, &cache),
    }
}

fn run(args: RunArgs, cache: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = VmConfig::new()
        .controllers(args.controllers)
        .namespaces(args.namespaces)
        .namespace_size(args.namespace_mib.checked_mul(1 << 20).context("namespace size overflows")?)
        .memory_mib(args.memory)
        .cpus(args.cpus)
        .hugepages(args.hugepages)
        .network(args.net)
        .nvme_driver(if args.vfio { NvmeDriver::Vfio } else { NvmeDriver::Kernel })
        .timeout(Duration::from_secs(args.timeout));
    let vm = TestVm::with_cache(config, cache)?.quiet();
    let (program, rest) = args.command.split_first().context("no command given")?;
    let mut cmd = GuestCommand::new(program).args(rest).current_dir(std::env::current_dir().context("current folder")?);
    for pair in &args.env {
        let (k, v) = pair.split_once('=').with_context(|| format!("--env {pair}: expected KEY=VALUE"))?;
        cmd = cmd.env(k, v);
    }
    let out = vm.run(&cmd)?;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    if args.console {
        eprintln!("--- guest console ---\n{}", out.console);
    }
    eprintln!(
        "pollux-testvm: exit {} after {:.1} s (guest boot {:.1} s, command {:.1} s)",
        out.status,
        out.timing.total.as_secs_f64(),
        out.timing.boot.as_secs_f64(),
        out.timing.command.as_secs_f64()
    );
    Ok(ExitCode::from(u8::try_from(out.status).unwrap_or(u8::MAX)))
}
