// SPDX-License-Identifier: MIT
// Links the 2016 API statically from what 'pkg-config --static ivshmfs2016'
// says (the clean-room test); not run.
#include <ivshmfs/api2016.h>
#include <stdio.h>

int main(void) {
  if (setVmId(0) != 0) return 1;
  printf("partition size %ld\n", mapPartitionSize());
  return 0;
}
