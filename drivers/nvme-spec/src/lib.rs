//! NVMe wire structures and constants (NVMe Base Specification 2.0):
//! submission and completion queue entries, identify data, status codes.
//! Shared by the PCIe driver and the NVMe-oF target.
