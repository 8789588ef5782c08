# SPDX-License-Identifier: GPL-2.0
# Boot only: the modules loaded and /dev/ivshm0 is there. Measures boot time.
. /scenarios/common.sh
check devnode test -c /dev/ivshm0
check fuse test -c /dev/fuse
finish
