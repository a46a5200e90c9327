// Schemas of the megatron_align ops (TORCH_LIBRARY) and the Python module init of
// megatron_align._C. Importing the module loads this library, which registers the ops;
// implementations are registered per device in ops_cpu.cpp and ops_cuda.cpp.
// Python faces (autograd, tensor-parallel collectives, fake kernels): megatron_align/ops/.
#include <Python.h>
#include <torch/library.h>

#include "ops_schema.h"

TORCH_LIBRARY(megatron_align, m) {
  MEGATRON_ALIGN_DEFINE_SCHEMAS(m);
}

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "megatron_align kernels; the ops live in torch.ops.megatron_align", -1,
                                   nullptr};
  return PyModule_Create(&module_def);
}
