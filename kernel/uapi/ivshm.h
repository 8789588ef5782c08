/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * ivshm: user-space interface of the ivshmem PCI driver (1af4:1110).
 *
 * /dev/ivshmN maps BAR2 (the shared region) with mmap(); the ioctls below
 * describe the device and, on ivshmem-doorbell, ring a peer's MSI-X vector.
 * On a device with IVSHM_INFO_F_DOORBELL, poll() and read() of /dev/ivshmN
 * wait for this peer's interrupts: read() returns a __u64 counter (host
 * byte order) of the interrupts of the vector(s) the file waits for
 * (IVSHM_IOC_WAIT_VECTOR; all vectors by default), blocking until it
 * differs from the value the file saw last, as uio does. This header is the
 * single definition shared by the kernel module and user space (lib/
 * includes it).
 */
#ifndef IVSHM_UAPI_H
#define IVSHM_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define IVSHM_DEVICE_PREFIX "ivshm"

/* Flags in ivshm_info.flags. */
#define IVSHM_INFO_F_MSIX (1U << 0) /* ivshmem-doorbell: interrupts via MSI-X */
/*
 * BAR2 has struct pages: its mapping can be pinned by get_user_pages() (a FUSE
 * reply written from it, O_DIRECT, vmsplice). Without it (a BAR2 not aligned
 * to 2 MiB, or a kernel without ZONE_DEVICE) such calls fail with EFAULT and
 * a caller must copy through a buffer of its own. Meaningful only when
 * ivshm_info.info_version >= 1; older drivers leave both zero.
 */
#define IVSHM_INFO_F_PAGES (1U << 1)
/*
 * The driver allocated the MSI-X vectors: poll()/read() wait for interrupts,
 * IVSHM_IOC_RING rings peers. Older drivers never set it.
 */
#define IVSHM_INFO_F_DOORBELL (1U << 2)

/* ivshm_info.info_version of this header. */
#define IVSHM_INFO_VERSION 1

struct ivshm_info {
	__u64 bar2_size;   /* bytes of the shared region (BAR2) */
	__u32 ivposition;  /* IVPosition register; 0 on ivshmem-plain */
	__u32 revision;    /* PCI revision id */
	__u32 flags;       /* IVSHM_INFO_F_* */
	__u32 vectors;     /* MSI-X vectors of the device (0 on ivshmem-plain) */
	__u32 minor;       /* N of /dev/ivshmN */
	__u32 info_version; /* IVSHM_INFO_VERSION; 0 from drivers older than F_PAGES */
	__u64 reserved[4]; /* zero; room to grow without a new ioctl */
};

/* 0xD7: no uapi header of Linux 6.1 uses this ioctl type. */
#define IVSHM_IOCTL_BASE 0xD7
#define IVSHM_IOC_INFO _IOR(IVSHM_IOCTL_BASE, 0x01, struct ivshm_info)

/* Ring MSI-X vector @vector of peer @peer (its IVPosition). */
struct ivshm_ring {
	__u16 peer;
	__u16 vector;
	__u32 flags; /* zero */
};
#define IVSHM_IOC_RING _IOW(IVSHM_IOCTL_BASE, 0x02, struct ivshm_ring)

/*
 * Which of this peer's vectors poll()/read() of this open file wait for: a
 * vector number, or IVSHM_ALL_VECTORS (the default at open). Setting it
 * makes the file's last-seen counter the selection's current count, so the
 * next read() waits for a new interrupt.
 */
#define IVSHM_ALL_VECTORS (-1)
#define IVSHM_IOC_WAIT_VECTOR _IOW(IVSHM_IOCTL_BASE, 0x03, __s32)

#endif /* IVSHM_UAPI_H */
