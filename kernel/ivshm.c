// SPDX-License-Identifier: GPL-2.0
/*
 * ivshm: PCI driver for QEMU's ivshmem device (1af4:1110), ivshmem-plain and
 * ivshmem-doorbell.
 *
 * Each device gets a misc device /dev/ivshmN (N in probe order). mmap() of
 * /dev/ivshmN maps BAR2, the shared region, cacheable (write-back); the
 * IVSHM_IOC_INFO ioctl and read-only sysfs attributes on the misc device
 * describe the device. On ivshmem-doorbell the driver allocates the MSI-X
 * vectors and counts interrupts per vector: poll() and read() of /dev/ivshmN
 * wait for them, IVSHM_IOC_RING rings a peer's vector through the doorbell
 * register. The user-space interface is in uapi/ivshm.h.
 *
 * Lifetime: the per-device state is reference counted. The bound device
 * holds one reference and every open file holds one, so unbinding the device
 * while /dev/ivshmN is open or mapped is safe: remove() marks the device
 * dead, zaps every user mapping of BAR2 (later accesses get SIGBUS) and
 * further ioctl()/mmap() calls fail with -ENODEV. An open file or mapping
 * also holds a reference on the module (fops.owner), so rmmod fails with
 * -EBUSY until the last one goes away.
 *
 * A BAR2 page can stay pinned after every file and mapping is gone (vmsplice
 * into a pipe nobody reads). Its struct page must outlive the pin, so the
 * pages are torn down only when no page is pinned; until then a "pin watch"
 * holds a module reference (rmmod fails with -EBUSY) and, after remove(),
 * the BAR2 region (a new probe of the device fails with -EBUSY). remove()
 * itself never waits longer than IVSHM_REMOVE_GRACE_MS. See
 * ivshm_pin_watch().
 */

#include <linux/device.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kref.h>
#include <linux/delay.h>
#include <linux/list.h>
#include <linux/memremap.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/poll.h>
#include <linux/rwsem.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "uapi/ivshm.h"

#define IVSHM_DRV_NAME "ivshm"

#define IVSHM_VENDOR_ID 0x1af4
#define IVSHM_DEVICE_ID 0x1110

/* BARs of the ivshmem device (QEMU docs/specs/ivshmem-spec.txt). */
#define IVSHM_BAR_REGS 0 /* registers */
#define IVSHM_BAR_SHMEM 2 /* the shared memory */

/* BAR0 registers. */
#define IVSHM_REG_INTRMASK 0x00
#define IVSHM_REG_INTRSTATUS 0x04
#define IVSHM_REG_IVPOSITION 0x08
#define IVSHM_REG_DOORBELL 0x0c

/* Pages mapped by one fault: a 2 MiB window keeps first touch cheap. */
#define IVSHM_FAULT_AROUND_PAGES 512UL

/* How long remove() waits for transient pins (a FUSE reply, O_DIRECT). */
#define IVSHM_REMOVE_GRACE_MS 2000
/* How often a pin watch looks at the pages, and how often it says so. */
#define IVSHM_PIN_POLL_MS 500
#define IVSHM_PIN_LOG_SECONDS 60

/*
 * Compatibility with newer kernels. Every kernel-version test lives here.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
#define ivshm_vm_flags_set(vma, flags) vm_flags_set(vma, flags)
#else
static inline void ivshm_vm_flags_set(struct vm_area_struct *vma,
				      unsigned long flags)
{
	vma->vm_flags |= flags;
}
#endif

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
static void __iomem *ivshm_iomap_bar(struct pci_dev *pdev, int bar)
{
	return pcim_iomap_region(pdev, bar, IVSHM_DRV_NAME);
}
#else
static void __iomem *ivshm_iomap_bar(struct pci_dev *pdev, int bar)
{
	int ret = pcim_iomap_regions(pdev, BIT(bar), IVSHM_DRV_NAME);

	return ret ? IOMEM_ERR_PTR(ret) : pcim_iomap_table(pdev)[bar];
}
#endif
#if __has_include(<linux/pfn_t.h>)
#include <linux/pfn_t.h>
/* A devmap PFN: GUP finds the ZONE_DEVICE page behind it. */
#define ivshm_devmap_pfn(pfn) __pfn_to_pfn_t(pfn, PFN_DEV | PFN_MAP)
#else
/* Kernels without pfn_t take a plain PFN. */
#define ivshm_devmap_pfn(pfn) (pfn)
#endif
/* End of compatibility. */

struct ivshm_dev;

/* One MSI-X vector of an ivshmem-doorbell device. */
struct ivshm_vector {
	struct ivshm_dev *idev;
	atomic64_t count;		/* interrupts received */
	int irq;
	char name[24];			/* "ivshmN-V", in /proc/interrupts */
};

struct ivshm_dev {
	struct miscdevice misc;
	struct kref ref;
	struct pci_dev *pdev;
	int index;			/* N of /dev/ivshmN */
	char name[16];			/* "ivshmN" */
	char bdf[32];			/* PCI address, for messages after remove() */

	/* Immutable after probe. */
	phys_addr_t shm_start;		/* BAR2 bus address */
	resource_size_t shm_size;	/* BAR2 length */
	void *shm;			/* kernel mapping of BAR2 */
	struct dev_pagemap *pgmap;	/* BAR2's struct pages; NULL if none */
	int page_ref_idle;		/* refcount of an unused BAR2 page */
	u32 revision;
	u32 msix_vectors;		/* 0 on ivshmem-plain */

	/*
	 * Interrupts (ivshmem-doorbell): @nvecs vectors allocated and
	 * requested at probe (0 on ivshmem-plain or if allocation failed),
	 * freed in remove(); @vecs and the counters live until ivshm_free(),
	 * so readers of a removed device can still look at them. @events
	 * counts the interrupts of all vectors; @wait is woken on each one
	 * and on remove().
	 */
	u32 nvecs;
	struct ivshm_vector *vecs;
	atomic64_t events;
	wait_queue_head_t wait;

	/*
	 * @lock guards @regs and @alive against remove(): readers are ioctl,
	 * mmap and the page-fault handler; remove() takes it for writing.
	 */
	struct rw_semaphore lock;
	bool alive;
	void __iomem *regs;		/* BAR0 */

	/*
	 * Open files, so remove() can zap their mappings. @files_lock also
	 * guards the pin watch and the teardown of BAR2's struct pages.
	 */
	struct mutex files_lock;
	struct list_head files;
	bool removed;			/* remove() has run */
	bool pages_live;		/* @pgmap is still mapped */
	bool watching;			/* @pin_work holds a module and a kref */
	unsigned long watch_since;	/* jiffies when the watch started */
	unsigned long watch_logged;	/* jiffies of its last message */
	struct delayed_work pin_work;
	struct list_head lingering;	/* on ivshm_lingering after remove() */
};

/* An open /dev/ivshmN; file->private_data. */
struct ivshm_file {
	struct list_head node;
	struct file *file;
	struct ivshm_dev *idev;
	/* What poll()/read() wait for; @lock serializes read() and the ioctl. */
	struct mutex lock;
	int vector;			/* a vector, or IVSHM_ALL_VECTORS */
	u64 seen;			/* the count the last read() returned */
};

static DEFINE_IDA(ivshm_ida);
static struct workqueue_struct *ivshm_wq;
/* Removed devices whose BAR2 pages are still pinned, so probe() can say why. */
static LIST_HEAD(ivshm_lingering);
static DEFINE_MUTEX(ivshm_lingering_lock);

static void ivshm_free(struct kref *ref)
{
	struct ivshm_dev *idev = container_of(ref, struct ivshm_dev, ref);

	/* A pgmap still mapped is never freed (see ivshm_remove()). */
	if (!idev->pages_live)
		kfree(idev->pgmap);
	kfree(idev->vecs);
	kfree(idev);
}

static struct ivshm_dev *to_ivshm(struct miscdevice *misc)
{
	return container_of(misc, struct ivshm_dev, misc);
}

static struct ivshm_dev *ivshm_of(struct file *file)
{
	return ((struct ivshm_file *)file->private_data)->idev;
}

/* Caller holds idev->lock for reading and has checked idev->alive. */
static void ivshm_fill_info(struct ivshm_dev *idev, struct ivshm_info *info)
{
	memset(info, 0, sizeof(*info));
	info->bar2_size = idev->shm_size;
	info->ivposition = ioread32(idev->regs + IVSHM_REG_IVPOSITION);
	info->revision = idev->revision;
	info->flags = idev->msix_vectors ? IVSHM_INFO_F_MSIX : 0;
	if (idev->pgmap)
		info->flags |= IVSHM_INFO_F_PAGES;
	if (idev->nvecs)
		info->flags |= IVSHM_INFO_F_DOORBELL;
	info->vectors = idev->msix_vectors;
	info->minor = idev->index;
	info->info_version = IVSHM_INFO_VERSION;
}

/* ---- pinned BAR2 pages ---- */

/*
 * Why remove() cannot simply wait, and what it does instead.
 *
 * BAR2's struct pages are MEMORY_DEVICE_GENERIC: an unused page has a fixed
 * reference count (@page_ref_idle) and get_user_pages() raises it for as long
 * as the caller holds the page. memunmap_pages() only waits for the pgmap's
 * own percpu reference, which GUP holds during the page-table walk, not for
 * the pin; it then frees the struct pages. Tearing them down under a pin
 * would leave a pipe buffer (vmsplice) or an I/O pointing at freed memory,
 * and such a pin lasts as long as user space wants (a pipe nobody reads).
 *
 * So the pages are torn down only when no page is pinned, and otherwise a
 * pin watch (a delayed work polling every IVSHM_PIN_POLL_MS) waits for that:
 * - after the last file of a bound device is closed with a page pinned, the
 *   watch holds a module reference: rmmod fails with -EBUSY, in bounded
 *   time, and the kernel log says why;
 * - remove() waits IVSHM_REMOVE_GRACE_MS for transient pins, then returns:
 *   unbind finishes. If pages are still pinned, the watch keeps the struct
 *   pages, the BAR2 region and a module reference until they are released;
 *   binding the device again fails with -EBUSY meanwhile (probe() says why).
 * - remove() from module unload cannot defer, but it cannot meet a pin
 *   either: every pin was taken through a mapping, a mapping holds a module
 *   reference, and the watch takes over before the last one goes. Should it
 *   happen anyway, the struct pages are leaked rather than freed under a pin.
 *
 * A pin can only be taken through a user mapping of BAR2, and every mapping
 * holds its file: once the last file is released, the set of pinned pages
 * can only shrink.
 */

/* BAR2 pages someone holds a reference on. Caller holds files_lock. */
static unsigned long ivshm_pinned_pages(struct ivshm_dev *idev)
{
	unsigned long npages = idev->shm_size >> PAGE_SHIFT;
	unsigned long base_pfn = PHYS_PFN(idev->shm_start);
	unsigned long i, pinned = 0;

	if (!idev->pages_live)
		return 0;
	for (i = 0; i < npages; i++) {
		if (page_ref_count(pfn_to_page(base_pfn + i)) !=
		    idev->page_ref_idle)
			pinned++;
		if ((i & 4095) == 4095)
			cond_resched();
	}
	return pinned;
}

/* Unmap BAR2's struct pages; none may be pinned. Caller holds files_lock. */
static void ivshm_release_pages(struct ivshm_dev *idev)
{
	if (!idev->pages_live)
		return;
	memunmap_pages(idev->pgmap);
	release_mem_region(idev->shm_start, idev->shm_size);
	idev->pages_live = false;
}

/* Is BAR2 at @start held by a removed device whose pages are pinned? */
static bool ivshm_bar_lingering(phys_addr_t start)
{
	struct ivshm_dev *idev;
	bool found = false;

	mutex_lock(&ivshm_lingering_lock);
	list_for_each_entry(idev, &ivshm_lingering, lingering)
		found |= idev->shm_start == start;
	mutex_unlock(&ivshm_lingering_lock);
	return found;
}

static void ivshm_pin_watch(struct work_struct *work)
{
	struct ivshm_dev *idev =
		container_of(to_delayed_work(work), struct ivshm_dev, pin_work);
	unsigned long pinned, secs;
	bool removed;

	mutex_lock(&idev->files_lock);
	pinned = ivshm_pinned_pages(idev);
	secs = (jiffies - idev->watch_since) / HZ;
	if (pinned) {
		if (time_after(jiffies, idev->watch_logged +
				       IVSHM_PIN_LOG_SECONDS * HZ)) {
			idev->watch_logged = jiffies;
			pr_warn("%s %s: %lu page(s) of BAR2 still pinned after %lu s\n",
				IVSHM_DRV_NAME, idev->bdf, pinned, secs);
		}
		queue_delayed_work(ivshm_wq, &idev->pin_work,
				   msecs_to_jiffies(IVSHM_PIN_POLL_MS));
		mutex_unlock(&idev->files_lock);
		return;
	}
	idev->watching = false;
	removed = idev->removed;
	if (removed) {
		ivshm_release_pages(idev);
		mutex_lock(&ivshm_lingering_lock);
		list_del_init(&idev->lingering);
		mutex_unlock(&ivshm_lingering_lock);
	}
	mutex_unlock(&idev->files_lock);
	pr_info("%s %s: pinned pages of BAR2 released after %lu s%s\n",
		IVSHM_DRV_NAME, idev->bdf, secs,
		removed ? "; BAR2 is free, the device can be bound again" : "");
	kref_put(&idev->ref, ivshm_free);
	/* Last: module exit drains ivshm_wq, so this function may finish. */
	module_put(THIS_MODULE);
}

/*
 * Start the pin watch unless it runs, and say why. Caller holds files_lock
 * and a module reference (or the watch already holds one).
 */
static void ivshm_watch_start(struct ivshm_dev *idev, unsigned long pinned)
{
	if (!idev->watching) {
		idev->watching = true;
		idev->watch_since = jiffies;
		idev->watch_logged = jiffies;
		__module_get(THIS_MODULE);
		kref_get(&idev->ref);
		queue_delayed_work(ivshm_wq, &idev->pin_work,
				   msecs_to_jiffies(IVSHM_PIN_POLL_MS));
	}
	if (idev->removed)
		pr_warn("%s %s: unbound with %lu page(s) of BAR2 still pinned (e.g. vmsplice into a pipe nobody reads); BAR2 and the module stay in use until they are released\n",
			IVSHM_DRV_NAME, idev->bdf, pinned);
	else
		pr_warn("%s %s: %lu page(s) of BAR2 still pinned after the last close of /dev/%s (e.g. vmsplice into a pipe nobody reads); the module stays in use until they are released\n",
			IVSHM_DRV_NAME, idev->bdf, pinned, idev->name);
}

/* ---- page faults on a BAR2 mapping ---- */

/*
 * How BAR2 is mapped, and why it is cacheable.
 *
 * BAR2 of ivshmem is ordinary host memory (QEMU's memory-backend-file), and
 * all peers reach it through the host's coherent caches, so write-back
 * caching in the guest is correct. sysfs resource2 maps it uncached
 * (pgprot_noncached), which makes every access a bus transaction.
 *
 * probe() gives BAR2 struct pages with devm_memremap_pages()
 * (MEMORY_DEVICE_GENERIC, as device-dax does and as Looking Glass's kvmfr
 * does for this very device). That registers the range with the x86 PAT
 * memtype tracker as write-back (or what the firmware's MTRRs allow there)
 * and maps it so in the kernel. The fault handler inserts devmap PFNs with
 * vmf_insert_mixed(), which looks that memtype up, so user PTEs are
 * cacheable and never conflict with the kernel's mapping.
 *
 * Why struct pages rather than remap_pfn_range() of a memremap(MEMREMAP_WB)
 * region: a VM_PFNMAP/VM_IO mapping cannot be pinned by get_user_pages(), so
 * every kernel path that pins user buffers fails with EFAULT on it: the FUSE
 * device write of a reply taken straight from the mapping, O_DIRECT, vmsplice.
 * Devmap PTEs carry no rmap or per-mapping reference, like PFN mappings, so
 * remove() can still revoke them (zap, then SIGBUS on access) and only has to
 * wait for transient pins to drain before the struct pages go away.
 *
 * devm_memremap_pages() needs BAR2 aligned to a memory subsection (2 MiB).
 * A smaller BAR2 (QEMU allows 1 MiB, for example) falls back to a plain
 * PFN mapping of a memremap(MEMREMAP_WB) region: cacheable too, but not
 * pinnable.
 *
 * The PTEs are built at fault time, 2 MiB at a time, rather than at mmap():
 * a mapping filled on demand can be revoked, as DRM and VFIO do.
 */
static vm_fault_t ivshm_insert(struct ivshm_dev *idev,
			       struct vm_area_struct *vma, unsigned long addr,
			       unsigned long pfn, bool write)
{
	if (!idev->pgmap)
		return vmf_insert_pfn(vma, addr, pfn);
	if (write)
		return vmf_insert_mixed_mkwrite(vma, addr,
						ivshm_devmap_pfn(pfn));
	return vmf_insert_mixed(vma, addr, ivshm_devmap_pfn(pfn));
}

static vm_fault_t ivshm_vm_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct ivshm_dev *idev = ivshm_of(vma->vm_file);
	unsigned long npages = idev->shm_size >> PAGE_SHIFT;
	unsigned long base_pfn = PHYS_PFN(idev->shm_start);
	unsigned long fault_addr = vmf->address & PAGE_MASK;
	unsigned long window = IVSHM_FAULT_AROUND_PAGES * PAGE_SIZE;
	unsigned long addr, end, pgoff;
	vm_fault_t ret = VM_FAULT_SIGBUS;

	down_read(&idev->lock);
	if (!idev->alive || vmf->pgoff >= npages)
		goto out;

	ret = ivshm_insert(idev, vma, fault_addr, base_pfn + vmf->pgoff,
			   vmf->flags & FAULT_FLAG_WRITE);
	if (ret & VM_FAULT_ERROR)
		goto out;

	/* Best effort: map the rest of the aligned window, clipped to the VMA. */
	addr = max(fault_addr & ~(window - 1), vma->vm_start);
	end = min(addr + window, vma->vm_end);
	for (; addr < end; addr += PAGE_SIZE) {
		pgoff = vma->vm_pgoff + ((addr - vma->vm_start) >> PAGE_SHIFT);
		if (pgoff >= npages)
			break;
		if (addr == fault_addr)
			continue;
		if (ivshm_insert(idev, vma, addr, base_pfn + pgoff, false) &
		    VM_FAULT_ERROR)
			break;
	}
out:
	up_read(&idev->lock);
	return ret;
}

static const struct vm_operations_struct ivshm_vm_ops = {
	.fault = ivshm_vm_fault,
};

/* ---- /dev/ivshmN ---- */

static int ivshm_open(struct inode *inode, struct file *file)
{
	/* misc_open() set private_data to our miscdevice, under misc_mtx. */
	struct ivshm_dev *idev = to_ivshm(file->private_data);
	struct ivshm_file *ifile;

	ifile = kzalloc(sizeof(*ifile), GFP_KERNEL);
	if (!ifile)
		return -ENOMEM;
	ifile->file = file;
	ifile->idev = idev;
	mutex_init(&ifile->lock);
	/* Interrupts from now on, of every vector. */
	ifile->vector = IVSHM_ALL_VECTORS;
	ifile->seen = atomic64_read(&idev->events);

	down_read(&idev->lock);
	if (!idev->alive) {
		up_read(&idev->lock);
		kfree(ifile);
		return -ENODEV;
	}
	kref_get(&idev->ref);
	mutex_lock(&idev->files_lock);
	list_add(&ifile->node, &idev->files);
	mutex_unlock(&idev->files_lock);
	up_read(&idev->lock);
	file->private_data = ifile;
	return 0;
}

static int ivshm_release(struct inode *inode, struct file *file)
{
	struct ivshm_file *ifile = file->private_data;
	struct ivshm_dev *idev = ifile->idev;
	unsigned long pinned;

	mutex_lock(&idev->files_lock);
	list_del(&ifile->node);
	mutex_destroy(&ifile->lock);
	kfree(ifile);
	/*
	 * The last mapping is gone: a page pinned now stays pinned after this
	 * file's module reference is dropped, so the watch takes one.
	 */
	if (list_empty(&idev->files) && !idev->removed) {
		pinned = ivshm_pinned_pages(idev);
		if (pinned)
			ivshm_watch_start(idev, pinned);
	}
	mutex_unlock(&idev->files_lock);
	kref_put(&idev->ref, ivshm_free);
	return 0;
}

static int ivshm_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct ivshm_dev *idev = ivshm_of(file);
	unsigned long npages = idev->shm_size >> PAGE_SHIFT;
	unsigned long len = vma->vm_end - vma->vm_start;
	int ret = 0;

	/*
	 * MAP_SHARED only: a private mapping would copy on write, meaningless
	 * for shared memory. (VM_SHARED is cleared on read-only shared
	 * mappings of read-only files; VM_MAYSHARE is not.)
	 */
	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	/* Offset and length in pages, so neither can overflow. */
	if (vma->vm_pgoff >= npages ||
	    vma_pages(vma) > npages - vma->vm_pgoff || !len)
		return -EINVAL;

	down_read(&idev->lock);
	if (!idev->alive) {
		ret = -ENODEV;
		goto out;
	}
	if (idev->pgmap)
		ivshm_vm_flags_set(vma, VM_MIXEDMAP | VM_DONTEXPAND |
					VM_DONTDUMP);
	else
		ivshm_vm_flags_set(vma, VM_PFNMAP | VM_IO | VM_DONTEXPAND |
					VM_DONTDUMP);
	vma->vm_ops = &ivshm_vm_ops;
out:
	up_read(&idev->lock);
	return ret;
}

/* ---- interrupts: waiting and ringing ---- */

static irqreturn_t ivshm_irq(int irq, void *data)
{
	struct ivshm_vector *vec = data;

	atomic64_inc(&vec->count);
	atomic64_inc(&vec->idev->events);
	wake_up_interruptible_all(&vec->idev->wait);
	return IRQ_HANDLED;
}

/* Interrupts so far of @vector (a vector, or IVSHM_ALL_VECTORS). */
static u64 ivshm_count(struct ivshm_dev *idev, int vector)
{
	if (vector == IVSHM_ALL_VECTORS)
		return atomic64_read(&idev->events);
	return atomic64_read(&idev->vecs[vector].count);
}

static bool ivshm_pending(struct ivshm_file *ifile)
{
	return ivshm_count(ifile->idev, READ_ONCE(ifile->vector)) !=
	       READ_ONCE(ifile->seen);
}

/*
 * read(): the interrupt count of the file's selection, 8 bytes, once it
 * differs from what this file saw last (as uio does). Waits unless
 * O_NONBLOCK (-EAGAIN). Without interrupts (ivshmem-plain) -EINVAL, as before
 * the driver had read(); after remove() -ENODEV.
 */
static ssize_t ivshm_read(struct file *file, char __user *buf, size_t len,
			  loff_t *ppos)
{
	struct ivshm_file *ifile = file->private_data;
	struct ivshm_dev *idev = ifile->idev;
	u64 count;
	int ret;

	if (!idev->nvecs || len < sizeof(count))
		return -EINVAL;
	for (;;) {
		if (!READ_ONCE(idev->alive))
			return -ENODEV;
		mutex_lock(&ifile->lock);
		count = ivshm_count(idev, ifile->vector);
		if (count != ifile->seen) {
			ifile->seen = count;
			mutex_unlock(&ifile->lock);
			if (copy_to_user(buf, &count, sizeof(count)))
				return -EFAULT;
			return sizeof(count);
		}
		mutex_unlock(&ifile->lock);
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible(idev->wait,
					       !READ_ONCE(idev->alive) ||
					       ivshm_pending(ifile));
		if (ret)
			return ret;
	}
}

/*
 * poll(): EPOLLIN when read() would not wait. EPOLLERR without interrupts
 * (ivshmem-plain), EPOLLERR | EPOLLHUP after remove().
 */
static __poll_t ivshm_poll(struct file *file, poll_table *wait)
{
	struct ivshm_file *ifile = file->private_data;
	struct ivshm_dev *idev = ifile->idev;

	if (!idev->nvecs)
		return EPOLLERR;
	poll_wait(file, &idev->wait, wait);
	if (!READ_ONCE(idev->alive))
		return EPOLLERR | EPOLLHUP;
	return ivshm_pending(ifile) ? EPOLLIN | EPOLLRDNORM : 0;
}

/* Caller holds idev->lock for reading and has checked idev->alive. */
static long ivshm_ring(struct file *file, struct ivshm_dev *idev,
		       void __user *uarg)
{
	struct ivshm_ring ring;

	if (!idev->msix_vectors)
		return -EOPNOTSUPP;
	if (!(file->f_mode & FMODE_WRITE))
		return -EBADF;
	if (copy_from_user(&ring, uarg, sizeof(ring)))
		return -EFAULT;
	if (ring.flags)
		return -EINVAL;
	/* QEMU sends it to the peer's eventfd, which raises its MSI-X vector. */
	iowrite32(((u32)ring.peer << 16) | ring.vector,
		  idev->regs + IVSHM_REG_DOORBELL);
	return 0;
}

static long ivshm_wait_vector(struct ivshm_file *ifile, void __user *uarg)
{
	struct ivshm_dev *idev = ifile->idev;
	s32 vector;

	if (!idev->nvecs)
		return -EOPNOTSUPP;
	if (get_user(vector, (s32 __user *)uarg))
		return -EFAULT;
	if (vector != IVSHM_ALL_VECTORS &&
	    (vector < 0 || vector >= (s32)idev->nvecs))
		return -EINVAL;
	mutex_lock(&ifile->lock);
	WRITE_ONCE(ifile->vector, vector);
	WRITE_ONCE(ifile->seen, ivshm_count(idev, vector));
	mutex_unlock(&ifile->lock);
	return 0;
}

static long ivshm_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct ivshm_dev *idev = ivshm_of(file);
	void __user *uarg = (void __user *)arg;
	struct ivshm_info info;
	long ret;

	down_read(&idev->lock);
	if (!idev->alive) {
		ret = -ENODEV;
		goto out;
	}
	switch (cmd) {
	case IVSHM_IOC_INFO:
		ivshm_fill_info(idev, &info);
		ret = copy_to_user(uarg, &info, sizeof(info)) ? -EFAULT : 0;
		break;
	case IVSHM_IOC_RING:
		ret = ivshm_ring(file, idev, uarg);
		break;
	case IVSHM_IOC_WAIT_VECTOR:
		ret = ivshm_wait_vector(file->private_data, uarg);
		break;
	default:
		ret = -ENOTTY;
		break;
	}
out:
	up_read(&idev->lock);
	return ret;
}

static const struct file_operations ivshm_fops = {
	.owner = THIS_MODULE,
	.open = ivshm_open,
	.release = ivshm_release,
	.mmap = ivshm_mmap,
	.read = ivshm_read,
	.poll = ivshm_poll,
	.unlocked_ioctl = ivshm_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

/* ---- sysfs attributes of /sys/class/misc/ivshmN ---- */

static struct ivshm_dev *dev_to_ivshm(struct device *dev)
{
	/* misc_register() stores the miscdevice as the device's drvdata. */
	return to_ivshm(dev_get_drvdata(dev));
}

static ssize_t bar2_size_show(struct device *dev,
			      struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n",
			  (unsigned long long)dev_to_ivshm(dev)->shm_size);
}
static DEVICE_ATTR_RO(bar2_size);

static ssize_t ivposition_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct ivshm_dev *idev = dev_to_ivshm(dev);
	ssize_t ret = -ENODEV;

	down_read(&idev->lock);
	if (idev->alive)
		ret = sysfs_emit(buf, "%u\n",
				 ioread32(idev->regs + IVSHM_REG_IVPOSITION));
	up_read(&idev->lock);
	return ret;
}
static DEVICE_ATTR_RO(ivposition);

static ssize_t revision_show(struct device *dev,
			     struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", dev_to_ivshm(dev)->revision);
}
static DEVICE_ATTR_RO(revision);

static ssize_t msix_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	return sysfs_emit(buf, "%d\n", dev_to_ivshm(dev)->msix_vectors ? 1 : 0);
}
static DEVICE_ATTR_RO(msix);

static ssize_t vectors_show(struct device *dev, struct device_attribute *attr,
			    char *buf)
{
	return sysfs_emit(buf, "%u\n", dev_to_ivshm(dev)->msix_vectors);
}
static DEVICE_ATTR_RO(vectors);

static ssize_t minor_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	return sysfs_emit(buf, "%d\n", dev_to_ivshm(dev)->index);
}
static DEVICE_ATTR_RO(minor);

static struct attribute *ivshm_attrs[] = {
	&dev_attr_bar2_size.attr,
	&dev_attr_ivposition.attr,
	&dev_attr_revision.attr,
	&dev_attr_msix.attr,
	&dev_attr_vectors.attr,
	&dev_attr_minor.attr,
	NULL,
};
ATTRIBUTE_GROUPS(ivshm);

/* ---- probe and remove ---- */

/* BAR0: the registers (interrupt mask/status, IVPosition, doorbell). */
static int ivshm_setup_regs(struct ivshm_dev *idev)
{
	void __iomem *regs = ivshm_iomap_bar(idev->pdev, IVSHM_BAR_REGS);

	if (IS_ERR(regs))
		return PTR_ERR(regs);
	if (!regs)
		return -ENOMEM;
	idev->regs = regs;
	return 0;
}

/*
 * BAR2 with struct pages. Not device-managed: the pages may have to outlive
 * the binding (see ivshm_pin_watch()), so ivshm_release_pages() undoes this.
 */
static int ivshm_setup_pages(struct ivshm_dev *idev)
{
	struct device *dev = &idev->pdev->dev;
	struct dev_pagemap *pgmap;
	void *addr;

	if (!request_mem_region(idev->shm_start, idev->shm_size, idev->name)) {
		dev_err(dev, "BAR2 %pa is busy\n", &idev->shm_start);
		return -EBUSY;
	}
	pgmap = kzalloc(sizeof(*pgmap), GFP_KERNEL);
	if (!pgmap) {
		release_mem_region(idev->shm_start, idev->shm_size);
		return -ENOMEM;
	}
	pgmap->type = MEMORY_DEVICE_GENERIC;
	pgmap->range.start = idev->shm_start;
	pgmap->range.end = idev->shm_start + idev->shm_size - 1;
	pgmap->nr_range = 1;
	addr = memremap_pages(pgmap, dev_to_node(dev));
	if (IS_ERR(addr)) {
		kfree(pgmap);
		release_mem_region(idev->shm_start, idev->shm_size);
		return PTR_ERR(addr);
	}
	idev->shm = addr;
	idev->pgmap = pgmap;
	idev->pages_live = true;
	idev->page_ref_idle =
		page_ref_count(pfn_to_page(PHYS_PFN(idev->shm_start)));
	return 0;
}

/* BAR2: the shared memory, mapped write-back (see ivshm_vm_fault()). */
static int ivshm_setup_shmem(struct ivshm_dev *idev)
{
	struct pci_dev *pdev = idev->pdev;
	struct device *dev = &pdev->dev;
	phys_addr_t start = pci_resource_start(pdev, IVSHM_BAR_SHMEM);
	resource_size_t size = pci_resource_len(pdev, IVSHM_BAR_SHMEM);
	void *addr;
	int ret;

	if (!size ||
	    !(pci_resource_flags(pdev, IVSHM_BAR_SHMEM) & IORESOURCE_MEM)) {
		dev_err(dev, "BAR2 (shared memory) is missing\n");
		return -ENODEV;
	}
	if (!PAGE_ALIGNED(start) || !PAGE_ALIGNED(size)) {
		dev_err(dev, "BAR2 %pa+%pa is not page aligned\n", &start,
			&size);
		return -EINVAL;
	}
	if (ivshm_bar_lingering(start)) {
		dev_err(dev, "BAR2 %pa: pages of the previous binding are still pinned; bind again once they are released (see the log above)\n",
			&start);
		return -EBUSY;
	}
	idev->shm_start = start;
	idev->shm_size = size;

	if (IS_ENABLED(CONFIG_ZONE_DEVICE) && IS_ALIGNED(start, SZ_2M) &&
	    IS_ALIGNED(size, SZ_2M)) {
		ret = ivshm_setup_pages(idev);
		if (!ret || ret == -EBUSY)
			return ret;
		dev_warn(dev, "no struct pages for BAR2 (%d); mapping it without\n",
			 ret);
	}

	if (!devm_request_mem_region(dev, start, size, idev->name)) {
		dev_err(dev, "BAR2 %pa is busy\n", &start);
		return -EBUSY;
	}
	addr = devm_memremap(dev, start, size, MEMREMAP_WB);
	if (IS_ERR(addr)) {
		dev_err(dev, "cannot map BAR2 write-back: %ld\n", PTR_ERR(addr));
		return PTR_ERR(addr);
	}
	idev->shm = addr;
	return 0;
}

/*
 * After the user mappings are zapped, wait at most @ms for transient pins of
 * BAR2 pages (an in-flight O_DIRECT or FUSE write from the mapping) to drain.
 * Returns how many pages are still pinned.
 */
static unsigned long ivshm_wait_unpinned(struct ivshm_dev *idev,
					 unsigned int ms)
{
	unsigned long pinned;
	unsigned int waited = 0;

	for (;;) {
		mutex_lock(&idev->files_lock);
		pinned = ivshm_pinned_pages(idev);
		mutex_unlock(&idev->files_lock);
		if (!pinned || waited >= ms)
			return pinned;
		msleep(20);
		waited += 20;
	}
}

/*
 * Interrupts. ivshmem-doorbell has MSI-X: allocate every vector it offers
 * and request an interrupt for each (named ivshmN-V in /proc/interrupts).
 * Failing that, the device still maps; poll()/read() then behave as on
 * ivshmem-plain. Torn down by ivshm_teardown_irqs() in remove().
 */
static int ivshm_setup_irqs(struct ivshm_dev *idev)
{
	struct pci_dev *pdev = idev->pdev;
	int n = pci_msix_vec_count(pdev);
	int i, got, ret;

	idev->msix_vectors = n > 0 ? n : 0;
	if (n <= 0)
		return 0;
	idev->vecs = kcalloc(n, sizeof(*idev->vecs), GFP_KERNEL);
	if (!idev->vecs)
		return -ENOMEM;
	got = pci_alloc_irq_vectors(pdev, 1, n, PCI_IRQ_MSIX);
	if (got < 0) {
		dev_warn(&pdev->dev, "cannot allocate MSI-X vectors (%d): no interrupts, poll() and read() fail\n",
			 got);
		return 0;
	}
	/* MSI-X messages are memory writes by the device. */
	pci_set_master(pdev);
	for (i = 0; i < got; i++) {
		struct ivshm_vector *vec = &idev->vecs[i];

		vec->idev = idev;
		atomic64_set(&vec->count, 0);
		snprintf(vec->name, sizeof(vec->name), "%s-%d", idev->name, i);
		vec->irq = pci_irq_vector(pdev, i);
		ret = request_irq(vec->irq, ivshm_irq, 0, vec->name, vec);
		if (ret) {
			dev_err(&pdev->dev, "cannot request the interrupt of vector %d: %d\n",
				i, ret);
			while (--i >= 0)
				free_irq(idev->vecs[i].irq, &idev->vecs[i]);
			pci_free_irq_vectors(pdev);
			return ret;
		}
	}
	idev->nvecs = got;
	if (got < n)
		dev_warn(&pdev->dev, "only %d of %d MSI-X vectors allocated\n",
			 got, n);
	return 0;
}

/* After this no handler runs; the counters stay readable. */
static void ivshm_teardown_irqs(struct ivshm_dev *idev)
{
	u32 i;

	if (!idev->nvecs)
		return;
	for (i = 0; i < idev->nvecs; i++)
		free_irq(idev->vecs[i].irq, &idev->vecs[i]);
	pci_free_irq_vectors(idev->pdev);
}

static int ivshm_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct ivshm_dev *idev;
	int ret;

	ret = pcim_enable_device(pdev);
	if (ret) {
		dev_err(dev, "cannot enable device: %d\n", ret);
		return ret;
	}

	idev = kzalloc(sizeof(*idev), GFP_KERNEL);
	if (!idev)
		return -ENOMEM;
	kref_init(&idev->ref);
	init_rwsem(&idev->lock);
	init_waitqueue_head(&idev->wait);
	atomic64_set(&idev->events, 0);
	mutex_init(&idev->files_lock);
	INIT_LIST_HEAD(&idev->files);
	INIT_LIST_HEAD(&idev->lingering);
	INIT_DELAYED_WORK(&idev->pin_work, ivshm_pin_watch);
	idev->pdev = pdev;
	idev->revision = pdev->revision;
	strscpy(idev->bdf, pci_name(pdev), sizeof(idev->bdf));

	ret = ida_alloc(&ivshm_ida, GFP_KERNEL);
	if (ret < 0)
		goto err_free;
	idev->index = ret;
	snprintf(idev->name, sizeof(idev->name), IVSHM_DEVICE_PREFIX "%d",
		 idev->index);

	ret = ivshm_setup_regs(idev);
	if (ret) {
		dev_err(dev, "cannot map BAR0 (registers): %d\n", ret);
		goto err_ida;
	}
	ret = ivshm_setup_shmem(idev);
	if (ret)
		goto err_ida;
	ret = ivshm_setup_irqs(idev);
	if (ret)
		goto err_pages;

	idev->alive = true;
	pci_set_drvdata(pdev, idev);

	idev->misc.minor = MISC_DYNAMIC_MINOR;
	idev->misc.name = idev->name;
	idev->misc.fops = &ivshm_fops;
	idev->misc.parent = dev;
	idev->misc.groups = ivshm_groups;
	ret = misc_register(&idev->misc);
	if (ret) {
		dev_err(dev, "cannot register /dev/%s: %d\n", idev->name, ret);
		goto err_irqs;
	}

	dev_info(dev, "/dev/%s: BAR2 %llu bytes (%llu MiB) at %pa%s, %s, rev %u\n",
		 idev->name, (unsigned long long)idev->shm_size,
		 (unsigned long long)idev->shm_size >> 20, &idev->shm_start,
		 idev->pgmap ? "" : " (no struct pages)",
		 idev->msix_vectors ? "doorbell (MSI-X)" : "plain",
		 idev->revision);
	if (idev->msix_vectors)
		dev_info(dev, "/dev/%s: %u of %u MSI-X vectors with interrupts, IVPosition %u\n",
			 idev->name, idev->nvecs, idev->msix_vectors,
			 ioread32(idev->regs + IVSHM_REG_IVPOSITION));
	return 0;

err_irqs:
	ivshm_teardown_irqs(idev);
err_pages:
	/* Nothing mapped BAR2 yet, so nothing can pin it. */
	mutex_lock(&idev->files_lock);
	ivshm_release_pages(idev);
	mutex_unlock(&idev->files_lock);
	kfree(idev->pgmap);
err_ida:
	ida_free(&ivshm_ida, idev->index);
err_free:
	kfree(idev->vecs);
	kfree(idev);
	return ret;
}

static void ivshm_remove(struct pci_dev *pdev)
{
	struct ivshm_dev *idev = pci_get_drvdata(pdev);
	struct ivshm_file *ifile;
	unsigned long pinned;

	/* No new opens; open files keep idev alive through their reference. */
	misc_deregister(&idev->misc);

	/* Wait for in-flight ioctl/mmap/faults; later ones see !alive. */
	down_write(&idev->lock);
	idev->alive = false;
	idev->regs = NULL;
	up_write(&idev->lock);
	/* Waiters in read()/poll() see !alive: -ENODEV, EPOLLHUP. */
	wake_up_interruptible_all(&idev->wait);
	ivshm_teardown_irqs(idev);

	/*
	 * Revoke user mappings before devres unmaps and releases BAR2; a
	 * later access faults into ivshm_vm_fault() and gets SIGBUS.
	 */
	mutex_lock(&idev->files_lock);
	list_for_each_entry(ifile, &idev->files, node)
		unmap_mapping_range(ifile->file->f_mapping, 0, 0, 1);
	mutex_unlock(&idev->files_lock);

	/* Bounded: pins that outlast the grace time go to the pin watch. */
	ivshm_wait_unpinned(idev, IVSHM_REMOVE_GRACE_MS);
	mutex_lock(&idev->files_lock);
	idev->removed = true;
	pinned = ivshm_pinned_pages(idev);
	if (!pinned && !idev->watching) {
		ivshm_release_pages(idev);
	} else if (idev->watching || module_is_live(THIS_MODULE)) {
		/* The watch releases the pages once nothing pins them. */
		mutex_lock(&ivshm_lingering_lock);
		list_add(&idev->lingering, &ivshm_lingering);
		mutex_unlock(&ivshm_lingering_lock);
		/* Pinned now; or the running watch finds none at its next poll. */
		if (pinned)
			ivshm_watch_start(idev, pinned);
	} else {
		/* See ivshm_pin_watch(): not reachable through a mapping. */
		dev_err(&pdev->dev, "unloading with %lu page(s) of BAR2 pinned: leaking its struct pages rather than freeing them under the pin\n",
			pinned);
		kref_get(&idev->ref);
	}
	mutex_unlock(&idev->files_lock);

	dev_info(&pdev->dev, "/dev/%s removed\n", idev->name);
	ida_free(&ivshm_ida, idev->index);
	kref_put(&idev->ref, ivshm_free);
}

static const struct pci_device_id ivshm_ids[] = {
	{ PCI_DEVICE(IVSHM_VENDOR_ID, IVSHM_DEVICE_ID) },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, ivshm_ids);

static struct pci_driver ivshm_driver = {
	.name = IVSHM_DRV_NAME,
	.id_table = ivshm_ids,
	.probe = ivshm_probe,
	.remove = ivshm_remove,
};

static int __init ivshm_init(void)
{
	int ret;

	ivshm_wq = alloc_workqueue(IVSHM_DRV_NAME, 0, 0);
	if (!ivshm_wq)
		return -ENOMEM;
	ret = pci_register_driver(&ivshm_driver);
	if (ret)
		destroy_workqueue(ivshm_wq);
	return ret;
}

static void __exit ivshm_exit(void)
{
	pci_unregister_driver(&ivshm_driver);
	/* A pin watch may still be returning from its module_put(). */
	destroy_workqueue(ivshm_wq);
	ida_destroy(&ivshm_ida);
}

module_init(ivshm_init);
module_exit(ivshm_exit);

MODULE_DESCRIPTION("QEMU ivshmem: cacheable mmap of the shared memory BAR");
MODULE_AUTHOR("ivshmfs");
MODULE_LICENSE("GPL");
