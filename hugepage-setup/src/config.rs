//! `config` and `reset`: what an operator runs before and after Pollux.

use std::path::PathBuf;

use crate::bind::{self, NVME, VFIO_PCI};
use crate::error::{Error, Result};
use crate::hugepages::{self, format_size_kb};
use crate::nvme::{self, Bdf, Controller, Usage};
use crate::system::{Os, System, User, lookup_user, read_attr, read_number};

/// How much hugepage memory to reserve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    MiB(u64),
    Pages(u64),
}

impl Amount {
    /// Pages of `page_size_kb` covering the amount (rounded up).
    pub fn pages(self, page_size_kb: u64) -> u64 {
        match self {
            Amount::Pages(n) => n,
            Amount::MiB(mib) => (mib.saturating_mul(1024)).div_ceil(page_size_kb),
        }
    }
}

/// Which NVMe controllers an operation touches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these (all when empty).
    pub allow: Vec<Bdf>,
    /// Never these.
    pub block: Vec<Bdf>,
}

impl Selection {
    /// The selected controllers; an allowed address that is not an NVMe
    /// controller is an error rather than silently ignored.
    pub fn apply(&self, all: Vec<Controller>) -> Result<Vec<Controller>> {
        if let Some(missing) = self.allow.iter().find(|b| !all.iter().any(|c| &c.bdf == *b)) {
            return Err(Error::NotNvme(missing.clone()));
        }
        Ok(all
            .into_iter()
            .filter(|c| self.allow.is_empty() || self.allow.contains(&c.bdf))
            .filter(|c| !self.block.contains(&c.bdf))
            .collect())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigRequest {
    /// `None` leaves the hugepage pool as it is.
    pub hugepages: Option<Amount>,
    pub page_size_kb: u64,
    pub node: Option<u32>,
    pub devices: Selection,
    pub user: Option<String>,
    pub dry_run: bool,
    /// Bind devices that hold data but are not in use. Never overrides a mount,
    /// swap or holder.
    pub force: bool,
    /// Let the pool shrink to the amount asked for; without it a larger
    /// pool is kept (free pages others may count on are not taken away).
    pub shrink: bool,
}

/// What an operation did (or, with `--dry-run`, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub dry_run: bool,
    pub actions: Vec<String>,
    pub warnings: Vec<String>,
    /// Devices left alone because they are in use; the command fails if any.
    pub refused: Vec<(Bdf, Vec<Usage>)>,
}

impl Report {
    fn action(&mut self, text: String) {
        self.actions.push(text);
    }
}

fn require_root<O: Os>(sys: &System<O>, dry_run: bool, action: &'static str) -> Result<()> {
    if dry_run || sys.os.is_root() { Ok(()) } else { Err(Error::NotRoot { action }) }
}

/// Reserves hugepages, mounts hugetlbfs, binds the selected NVMe controllers to
/// vfio-pci and hands them to `user`.
pub fn config<O: Os>(sys: &System<O>, req: &ConfigRequest) -> Result<Report> {
    // Everything that can be validated without changing anything comes first.
    let nr_path = hugepages::nr_hugepages_path(sys, req.page_size_kb, req.node)?;
    let user = req.user.as_deref().map(|u| lookup_user(sys, u)).transpose()?;
    let selected = req.devices.apply(nvme::controllers(sys, true)?)?;
    require_root(sys, req.dry_run, "pollux-setup config")?;
    let mut report = Report { dry_run: req.dry_run, ..Report::default() };
    // Refusals and IOMMU checks before anything changes: an error here
    // leaves the machine as it was.
    let plan = plan_binds(sys, req, selected, &mut report)?;

    let reserved = reserve_hugepages(sys, req, &nr_path, &mut report)?;
    let mount = ensure_mount(sys, req, &mut report)?;
    let groups = bind_devices(sys, req, plan, &mut report)?;

    if let Some(user) = &user {
        for group in groups {
            grant(sys, req.dry_run, &bind::vfio_group_device(group), user, &mut report)?;
        }
        grant(sys, req.dry_run, &mount, user, &mut report)?;
    }
    let needed = reserved.saturating_mul(req.page_size_kb * 1024);
    if let Some(limit) = sys.os.memlock_limit().filter(|&l| l < needed) {
        report.warnings.push(format!(
            "the memlock limit ({} KiB) is below the reserved hugepage memory ({} KiB): a \
             non-root Pollux cannot map it for DMA; raise it (`ulimit -l`, or memlock in \
             /etc/security/limits.d){}",
            limit / 1024,
            needed / 1024,
            user.as_ref().map(|u| format!(" for user {}", u.name)).unwrap_or_default()
        ));
    }
    Ok(report)
}

/// Returns the number of pages reserved afterwards.
fn reserve_hugepages<O: Os>(sys: &System<O>, req: &ConfigRequest, nr_path: &std::path::Path, report: &mut Report) -> Result<u64> {
    let current = read_number(nr_path)?.unwrap_or(0);
    let size = format_size_kb(req.page_size_kb);
    let where_ = req.node.map(|n| format!(" on node {n}")).unwrap_or_default();
    let Some(amount) = req.hugepages else {
        return Ok(current);
    };
    let wanted = amount.pages(req.page_size_kb);
    if wanted == current {
        report.action(format!("{current} {size} hugepages{where_} already reserved"));
        return Ok(current);
    }
    if wanted < current && !req.shrink {
        // The default 2048 MiB shrank a pool of 16 GiB to 2 GiB, releasing
        // pages other users (VMs, other DPDK programs) had set aside.
        report.action(format!(
            "{current} {size} hugepages{where_} already reserved, more than the {wanted} asked for (kept; --shrink gives the rest back)"
        ));
        return Ok(current);
    }
    if req.dry_run {
        report.action(format!("reserve {wanted} {size} hugepages{where_} (now {current})"));
        return Ok(wanted);
    }
    sys.write(nr_path, &wanted.to_string())?;
    let got = read_number(nr_path)?.unwrap_or(0);
    report.action(format!("reserved {got} {size} hugepages{where_} (was {current})"));
    if got < wanted {
        report.warnings.push(format!(
            "only {got} of {wanted} {size} hugepages could be reserved{where_} (memory is \
             fragmented or short; reserve at boot with hugepages= on the kernel command line)"
        ));
    }
    Ok(got)
}

/// Returns the hugetlbfs mount point (as the machine sees it) for the page size.
fn ensure_mount<O: Os>(sys: &System<O>, req: &ConfigRequest, report: &mut Report) -> Result<PathBuf> {
    let default_kb = hugepages::default_page_size_kb(sys)?;
    let mounts = hugepages::hugetlbfs_mounts(sys)?;
    let size = format_size_kb(req.page_size_kb);
    if let Some(m) = mounts.iter().find(|m| m.page_size_kb.or(default_kb) == Some(req.page_size_kb)) {
        report.action(format!("hugetlbfs for {size} pages already mounted on {}", m.path.display()));
        return Ok(m.path.clone());
    }
    let target = hugepages::default_mount_point(req.page_size_kb, default_kb);
    if req.dry_run {
        report.action(format!("mount hugetlbfs (pagesize={size}) on {}", target.display()));
        return Ok(target);
    }
    let dir = sys.host_path(&target);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    sys.os.mount_hugetlbfs(&dir, req.page_size_kb).map_err(|e| Error::io("mounting hugetlbfs on", &dir, e))?;
    report.action(format!("mounted hugetlbfs (pagesize={size}) on {}", target.display()));
    Ok(target)
}

/// A controller to bind (or already bound) and its IOMMU group.
struct Planned {
    ctrl: Controller,
    group: u32,
    /// On vfio-pci with its group open (a program drives it): left alone.
    busy: Option<String>,
}

/// Which selected controllers can be bound: those in use are refused (in
/// the report), every other one's IOMMU group is checked.
fn plan_binds<O: Os>(sys: &System<O>, req: &ConfigRequest, selected: Vec<Controller>, report: &mut Report) -> Result<Vec<Planned>> {
    let mut plan = Vec::new();
    for ctrl in selected {
        let on_vfio = ctrl.driver.as_deref() == Some(VFIO_PCI);
        let busy = ctrl.usage.iter().find(|u| on_vfio && u.is_vfio_open()).map(|u| u.to_string());
        let refusing: Vec<Usage> = ctrl.usage.iter().filter(|u| u.refuses(req.force) && !(on_vfio && u.is_vfio_open())).cloned().collect();
        if !refusing.is_empty() {
            report.refused.push((ctrl.bdf.clone(), refusing));
            continue;
        }
        for u in ctrl.usage.iter().filter(|u| !u.refuses(req.force)) {
            report.warnings.push(format!("{}: binding despite: {u}", ctrl.bdf));
        }
        let group = bind::check_iommu(sys, &ctrl)?;
        plan.push(Planned { ctrl, group, busy });
    }
    Ok(plan)
}

/// Binds what can be bound; returns the IOMMU groups of the bound devices.
fn bind_devices<O: Os>(sys: &System<O>, req: &ConfigRequest, plan: Vec<Planned>, report: &mut Report) -> Result<Vec<u32>> {
    let mut groups = Vec::new();
    let mut vfio_ready = false;
    for Planned { ctrl, group, busy } in plan {
        let from = ctrl.driver.clone().unwrap_or_else(|| "no driver".into());
        if let Some(why) = busy {
            // Its user keeps it; handing the group to another user would
            // take it away mid-run.
            report.action(format!("{} already bound to vfio-pci (IOMMU group {group}) and in use: {why}; left as it is", ctrl.bdf));
            continue;
        }
        if ctrl.driver.as_deref() == Some(VFIO_PCI) {
            report.action(format!("{} already bound to vfio-pci (IOMMU group {group})", ctrl.bdf));
        } else if req.dry_run {
            report.action(format!("bind {} ({from}) to vfio-pci (IOMMU group {group})", ctrl.bdf));
        } else {
            // Claimed from here to the unbind: nothing mounts or assembles
            // them after the checks.
            let claims = match nvme::claim_all(sys, &ctrl) {
                Ok(c) => c,
                Err(uses) => {
                    report.refused.push((ctrl.bdf.clone(), uses));
                    continue;
                }
            };
            if !vfio_ready {
                bind::load_vfio_pci(sys)?;
                report.action("loaded vfio-pci".into());
                vfio_ready = true;
            }
            bind::bind_vfio(sys, &ctrl, group)?;
            drop(claims);
            report.action(format!("bound {} ({from}) to vfio-pci: /dev/vfio/{group}", ctrl.bdf));
        }
        groups.push(group);
    }
    Ok(groups)
}

fn grant<O: Os>(sys: &System<O>, dry_run: bool, path: &std::path::Path, user: &User, report: &mut Report) -> Result<()> {
    if dry_run {
        report.action(format!("give {} to user {}", path.display(), user.name));
        return Ok(());
    }
    let host = sys.host_path(path);
    sys.os.chown(&host, user.uid, user.gid).map_err(|e| Error::io("changing the owner of", &host, e))?;
    report.action(format!("gave {} to user {}", path.display(), user.name));
    Ok(())
}

/// Returns the selected NVMe controllers that are on vfio-pci (or on no driver)
/// to the kernel's nvme driver.
pub fn reset<O: Os>(sys: &System<O>, devices: &Selection, dry_run: bool) -> Result<Report> {
    let selected = devices.apply(nvme::controllers(sys, true)?)?;
    require_root(sys, dry_run, "pollux-setup reset")?;
    let mut report = Report { dry_run, ..Report::default() };
    let mut nvme_loaded = false;
    for ctrl in selected {
        let override_ = read_attr(&ctrl.sysfs_dir(sys).join("driver_override"))?.unwrap_or_default();
        let ours = matches!(ctrl.driver.as_deref(), Some(VFIO_PCI) | None) || override_ == VFIO_PCI;
        if ctrl.driver.as_deref() == Some(NVME) || !ours {
            let driver = ctrl.driver.as_deref().unwrap_or("none");
            report.action(format!("{} stays on {driver}", ctrl.bdf));
            continue;
        }
        // A program driving it through VFIO (Pollux, SPDK, a VM's
        // passthrough): the unbind would wait for it to let go, and the
        // device would go from under it.
        let open: Vec<Usage> = ctrl.usage.iter().filter(|u| u.is_vfio_open()).cloned().collect();
        if !open.is_empty() {
            report.refused.push((ctrl.bdf.clone(), open));
            continue;
        }
        let from = ctrl.driver.clone().unwrap_or_else(|| "no driver".into());
        if dry_run {
            report.action(format!("return {} ({from}) to nvme", ctrl.bdf));
            continue;
        }
        if !nvme_loaded {
            if let Err(message) = sys.os.modprobe(NVME) {
                if !sys.path("sys/bus/pci/drivers/nvme").is_dir() {
                    return Err(Error::Modprobe { module: NVME.into(), message });
                }
            }
            nvme_loaded = true;
        }
        bind::bind_nvme(sys, &ctrl)?;
        report.action(format!("returned {} ({from}) to nvme", ctrl.bdf));
    }
    Ok(report)
}
