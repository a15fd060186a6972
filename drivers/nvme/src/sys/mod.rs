//! Everything that touches hardware or the kernel directly, and all of the
//! driver's `unsafe`: the BAR mapping, VFIO, and device-shared memory.

pub mod bar;
pub mod device_mem;
pub mod vfio;

pub use bar::Bar;
pub use device_mem::DeviceMemory;
pub use vfio::VfioPci;
