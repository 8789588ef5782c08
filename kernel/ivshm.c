// SPDX-License-Identifier: GPL-2.0
/*
 * ivshm: PCI driver for QEMU's ivshmem device (1af4:1110), ivshmem-plain and
 * ivshmem-doorbell.
 *
 * Each device gets a misc device /dev/ivshmN (N in probe order). mmap() of
 * /dev/ivshmN maps BAR2, the shared region, cacheable (write-back); the
 * IVSHM_IOC_INFO ioctl and read-only sysfs attributes on the misc device
 * describe the device. The user-space interface is in uapi/ivshm.h.
 *
 * Lifetime: the per-device state is reference counted. The bound device
 * holds one reference and every open file holds one, so unbinding the device
 * while /dev/ivshmN is open or mapped is safe: remove() marks the device
 * dead, zaps every user mapping of BAR2 (later accesses get SIGBUS) and
 * further ioctl()/mmap() calls fail with -ENODEV. An open file or mapping
 * also holds a reference on the module (fops.owner), so rmmod fails with
 * -EBUSY until the last one goes away.
 */

#include <linux/device.h>
#include <linux/fs.h>
#include <linux/idr.h>
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
#include <linux/rwsem.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>

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

struct ivshm_dev {
	struct miscdevice misc;
	struct kref ref;
	struct pci_dev *pdev;
	int index;			/* N of /dev/ivshmN */
	char name[16];			/* "ivshmN" */

	/* Immutable after probe. */
	phys_addr_t shm_start;		/* BAR2 bus address */
	resource_size_t shm_size;	/* BAR2 length */
	void *shm;			/* kernel mapping of BAR2 */
	struct dev_pagemap *pgmap;	/* BAR2's struct pages; NULL if none */
	int page_ref_idle;		/* refcount of an unused BAR2 page */
	u32 revision;
	u32 msix_vectors;		/* 0 on ivshmem-plain */

	/*
	 * @lock guards @regs and @alive against remove(): readers are ioctl,
	 * mmap and the page-fault handler; remove() takes it for writing.
	 */
	struct rw_semaphore lock;
	bool alive;
	void __iomem *regs;		/* BAR0 */

	/* Open files, so remove() can zap their mappings. */
	struct mutex files_lock;
	struct list_head files;
};

struct ivshm_file {
	struct list_head node;
	struct file *file;
};

static DEFINE_IDA(ivshm_ida);

static void ivshm_free(struct kref *ref)
{
	kfree(container_of(ref, struct ivshm_dev, ref));
}

static struct ivshm_dev *to_ivshm(struct miscdevice *misc)
{
	return container_of(misc, struct ivshm_dev, misc);
}

/* Caller holds idev->lock for reading and has checked idev->alive. */
static void ivshm_fill_info(struct ivshm_dev *idev, struct ivshm_info *info)
{
	memset(info, 0, sizeof(*info));
	info->bar2_size = idev->shm_size;
	info->ivposition = ioread32(idev->regs + IVSHM_REG_IVPOSITION);
	info->revision = idev->revision;
	info->flags = idev->msix_vectors ? IVSHM_INFO_F_MSIX : 0;
	info->vectors = idev->msix_vectors;
	info->minor = idev->index;
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
	struct ivshm_dev *idev = to_ivshm(vma->vm_file->private_data);
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
	return 0;
}

static int ivshm_release(struct inode *inode, struct file *file)
{
	struct ivshm_dev *idev = to_ivshm(file->private_data);
	struct ivshm_file *ifile, *tmp;

	mutex_lock(&idev->files_lock);
	list_for_each_entry_safe(ifile, tmp, &idev->files, node) {
		if (ifile->file == file) {
			list_del(&ifile->node);
			kfree(ifile);
			break;
		}
	}
	mutex_unlock(&idev->files_lock);
	kref_put(&idev->ref, ivshm_free);
	return 0;
}

static int ivshm_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct ivshm_dev *idev = to_ivshm(file->private_data);
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

static long ivshm_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct ivshm_dev *idev = to_ivshm(file->private_data);
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

/* BAR2: the shared memory, mapped write-back (see ivshm_vm_fault()). */
static int ivshm_setup_shmem(struct ivshm_dev *idev)
{
	struct pci_dev *pdev = idev->pdev;
	struct device *dev = &pdev->dev;
	phys_addr_t start = pci_resource_start(pdev, IVSHM_BAR_SHMEM);
	resource_size_t size = pci_resource_len(pdev, IVSHM_BAR_SHMEM);
	struct dev_pagemap *pgmap;
	void *addr;

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
	if (!devm_request_mem_region(dev, start, size, idev->name)) {
		dev_err(dev, "BAR2 %pa is busy\n", &start);
		return -EBUSY;
	}
	idev->shm_start = start;
	idev->shm_size = size;

	if (IS_ENABLED(CONFIG_ZONE_DEVICE) && IS_ALIGNED(start, SZ_2M) &&
	    IS_ALIGNED(size, SZ_2M)) {
		pgmap = devm_kzalloc(dev, sizeof(*pgmap), GFP_KERNEL);
		if (!pgmap)
			return -ENOMEM;
		pgmap->type = MEMORY_DEVICE_GENERIC;
		pgmap->range.start = start;
		pgmap->range.end = start + size - 1;
		pgmap->nr_range = 1;
		addr = devm_memremap_pages(dev, pgmap);
		if (!IS_ERR(addr)) {
			idev->shm = addr;
			idev->pgmap = pgmap;
			idev->page_ref_idle = page_ref_count(pfn_to_page(PHYS_PFN(start)));
			return 0;
		}
		dev_warn(dev, "no struct pages for BAR2 (%ld); mapping it without\n",
			 PTR_ERR(addr));
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
 * After the user mappings are zapped, wait until nobody pins a BAR2 page
 * (an in-flight O_DIRECT or FUSE write from the mapping) before devres
 * removes the struct pages.
 */
static void ivshm_wait_pages_idle(struct ivshm_dev *idev)
{
	unsigned long npages = idev->shm_size >> PAGE_SHIFT;
	unsigned long base_pfn = PHYS_PFN(idev->shm_start);
	unsigned long i, waited_ms = 0;

	if (!idev->pgmap)
		return;
	for (i = 0; i < npages; i++) {
		while (page_ref_count(pfn_to_page(base_pfn + i)) !=
		       idev->page_ref_idle) {
			if (waited_ms && waited_ms % 5000 == 0)
				dev_warn(&idev->pdev->dev,
					 "waiting for pinned pages of BAR2 to be released\n");
			msleep(20);
			waited_ms += 20;
		}
	}
}

/*
 * Interrupts. ivshmem-doorbell has MSI-X; we record how many vectors it
 * offers. Doorbell support (vector allocation, a wait/notify interface) grows
 * from here and is torn down in ivshm_remove() before the BARs go away.
 */
static int ivshm_setup_irqs(struct ivshm_dev *idev)
{
	int n = pci_msix_vec_count(idev->pdev);

	idev->msix_vectors = n > 0 ? n : 0;
	return 0;
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
	mutex_init(&idev->files_lock);
	INIT_LIST_HEAD(&idev->files);
	idev->pdev = pdev;
	idev->revision = pdev->revision;

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
		goto err_ida;

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
		goto err_ida;
	}

	dev_info(dev, "/dev/%s: BAR2 %llu bytes (%llu MiB) at %pa%s, %s, rev %u\n",
		 idev->name, (unsigned long long)idev->shm_size,
		 (unsigned long long)idev->shm_size >> 20, &idev->shm_start,
		 idev->pgmap ? "" : " (no struct pages)",
		 idev->msix_vectors ? "doorbell (MSI-X)" : "plain",
		 idev->revision);
	return 0;

err_ida:
	ida_free(&ivshm_ida, idev->index);
err_free:
	kfree(idev);
	return ret;
}

static void ivshm_remove(struct pci_dev *pdev)
{
	struct ivshm_dev *idev = pci_get_drvdata(pdev);
	struct ivshm_file *ifile;

	/* No new opens; open files keep idev alive through their reference. */
	misc_deregister(&idev->misc);

	/* Wait for in-flight ioctl/mmap/faults; later ones see !alive. */
	down_write(&idev->lock);
	idev->alive = false;
	idev->regs = NULL;
	up_write(&idev->lock);

	/*
	 * Revoke user mappings before devres unmaps and releases BAR2; a
	 * later access faults into ivshm_vm_fault() and gets SIGBUS.
	 */
	mutex_lock(&idev->files_lock);
	list_for_each_entry(ifile, &idev->files, node)
		unmap_mapping_range(ifile->file->f_mapping, 0, 0, 1);
	mutex_unlock(&idev->files_lock);
	ivshm_wait_pages_idle(idev);

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
	return pci_register_driver(&ivshm_driver);
}

static void __exit ivshm_exit(void)
{
	pci_unregister_driver(&ivshm_driver);
	ida_destroy(&ivshm_ida);
}

module_init(ivshm_init);
module_exit(ivshm_exit);

MODULE_DESCRIPTION("QEMU ivshmem: cacheable mmap of the shared memory BAR");
MODULE_AUTHOR("ivshmfs");
MODULE_LICENSE("GPL");
