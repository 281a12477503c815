// The extension module and the op schemas of the compiled backend.
//
// The Python module is empty: importing it runs the static registrations below, and because it
// uses only the limited C API one build serves every Python version. The public ops
// (torch.ops.resnext_kernels.grouped_conv_bn_relu, ...squeeze_excite) are defined in Python
// (resnext_kernels/ops.py); the ops here are the CUDA backend they dispatch to.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "resnext_kernels compiled CUDA kernels", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(resnext_kernels, m) {
  m.def(
      "grouped_conv_bn_relu_cuda(Tensor x, Tensor weight, Tensor scale, Tensor shift, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, bool relu) -> Tensor");
  m.def(
      "grouped_conv_bn_relu_masked_cuda(Tensor x, Tensor weight, Tensor scale, Tensor shift, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, bool relu) "
      "-> (Tensor, Tensor)");
  m.def(
      "grouped_conv_dgrad_cuda(Tensor grad_y, Tensor relu_mask, Tensor weight, Tensor scale, "
      "int[4] input_size, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "bool channels_last) -> Tensor");
  m.def(
      "grouped_conv_wgrad_cuda(Tensor grad_y, Tensor relu_mask, Tensor x, Tensor weight, "
      "Tensor scale, int[2] stride, int[2] padding, int[2] dilation, int groups) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "batchnorm_train_forward_cuda(Tensor z, Tensor gamma, Tensor beta, float eps, bool relu) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "batchnorm_train_backward_sums_cuda(Tensor grad_y, Tensor relu_mask, Tensor z, "
      "Tensor batch_mean, Tensor batch_var, Tensor gamma, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "batchnorm_train_grad_z_cuda(Tensor grad_y, Tensor relu_mask, Tensor z, "
      "Tensor grad_z_coefficients) -> Tensor");
  m.def(
      "squeeze_excite_cuda(Tensor u, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "Tensor? residual, bool relu) -> Tensor");
}
