// Stub for the host emulation (tools/cudaemu): the types only; cudaemu.h is force-included in kernel units.
#pragma once
#include "cudaemu_types.h"
