// SPDX-License-Identifier: MIT
// The 2016 report's four functions over the C API. One region per process,
// as in the report; the state lives here and nowhere else.
#include "ivshmfs/api2016.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>

#include "ivshmfs/identity.hpp"
#include "ivshmfs/ivshmfs.h"

namespace {

std::mutex state_mutex;
ivshmfs_region* region = nullptr;
std::optional<int> chosen_vm_id;
bool fresh_partition = false;  // the first write after init resets, as in the report
long partition_capacity = 0;

int fail(int err) {
  errno = err;
  return -1;
}

}  // namespace

extern "C" {

int setVmId(int vmId) {
  if (vmId < 0) return fail(EINVAL);
  std::lock_guard lock(state_mutex);
  chosen_vm_id = vmId;
  return 1;
}

int init(struct shared_mem* data) {
  std::lock_guard lock(state_mutex);
  if (data == nullptr || data->filename == nullptr || data->filesize < 0) return fail(EINVAL);
  if (region != nullptr) return fail(EALREADY);
  int32_t id = IVSHMFS_ID_FROM_HOSTNAME;
  if (chosen_vm_id) {
    id = *chosen_vm_id;
  } else if (const char* env = std::getenv("IVSHMFS_ID"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    if (*end != '\0' || value < 0 || value > INT32_MAX) {
      std::fprintf(stderr, "ivshmfs: IVSHMFS_ID='%s' is not a partition id\n", env);
      return fail(EINVAL);
    }
    id = static_cast<int32_t>(value);
  }
  // The report split the file into two equal partitions.
  ivshmfs_open_options options{data->filename, IVSHMFS_OPEN_WRITE | IVSHMFS_OPEN_CREATE, id,
                               static_cast<uint64_t>(data->filesize), 2};
  ivshmfs_region* opened = nullptr;
  if (int r = ivshmfs_open(&options, &opened); r < 0) {
    std::fprintf(stderr, "ivshmfs: init: %s\n", ivshmfs_last_error());
    return fail(-r);
  }
  ivshmfs_partition_stat s{};
  ivshmfs_stat(opened, static_cast<uint32_t>(ivshmfs_own_id(opened)), &s);
  region = opened;
  partition_capacity = static_cast<long>(s.capacity);
  fresh_partition = true;
  return 1;
}

int readFromMapN(char* recvBuff, size_t size, int readVmId) {
  std::lock_guard lock(state_mutex);
  if (region == nullptr) return fail(ENOTCONN);
  if (recvBuff == nullptr || size == 0 || readVmId < 0) return fail(EINVAL);
  const size_t room = std::min<size_t>(size - 1, INT32_MAX - 1);
  // A ring partition: what it retains, from its oldest byte. The writer may
  // overwrite that while we copy (EPIPE): start again from the new oldest.
  ssize_t n = -EPIPE;
  for (int attempt = 0; attempt < 100 && n == -EPIPE; ++attempt) {
    ivshmfs_partition_stat s{};
    if (int r = ivshmfs_stat(region, static_cast<uint32_t>(readVmId), &s); r < 0) return fail(-r);
    n = ivshmfs_read(region, static_cast<uint32_t>(readVmId), s.retained_from, recvBuff, room);
  }
  if (n < 0) return fail(static_cast<int>(-n));
  recvBuff[n] = '\0';
  return static_cast<int>(n) + 1;
}

int readFromMap(char* recvBuff, int readVmId) {
  long capacity = 0;
  {
    std::lock_guard lock(state_mutex);
    capacity = partition_capacity;
  }
  return readFromMapN(recvBuff, static_cast<size_t>(capacity) + 1, readVmId);
}

int writeFromMap(char* writeBuff) {
  std::lock_guard lock(state_mutex);
  if (region == nullptr) return fail(ENOTCONN);
  if (writeBuff == nullptr || *writeBuff == '\0') return fail(EINVAL);
  if (fresh_partition) {
    if (int r = ivshmfs_reset(region); r < 0) return fail(-r);
    fresh_partition = false;
  }
  const size_t length = std::strlen(writeBuff);
  const ssize_t n = ivshmfs_append(region, writeBuff, std::min<size_t>(length, INT32_MAX));
  if (n < 0) return fail(static_cast<int>(-n));
  return static_cast<int>(n);
}

int shutdownMap(void) {
  std::lock_guard lock(state_mutex);
  if (region == nullptr) return fail(ENOTCONN);
  ivshmfs_close(region);
  region = nullptr;
  partition_capacity = 0;
  return 1;
}

long mapPartitionSize(void) {
  std::lock_guard lock(state_mutex);
  return partition_capacity;
}

}  // extern "C"
