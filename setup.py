"""Build script.

The pure-Python package needs nothing compiled. The C++/CUDA extension in
``csrc/`` is opt-in ahead of time with ``LAAF_BUILD_EXT=1 pip install .``;
otherwise it is built on first use (see ``laaf_kernels/ops``).
"""
import glob
import os

from setuptools import setup


def extension_modules():
    if os.environ.get("LAAF_BUILD_EXT") != "1":
        return [], {}
    sources = sorted(glob.glob("csrc/*.cpp"))
    if not sources:
        raise SystemExit("LAAF_BUILD_EXT=1 but csrc/ holds no C++ sources in this version")
    from torch.utils import cpp_extension

    cuda = cpp_extension.CUDA_HOME is not None and glob.glob("csrc/*.cu")
    kind = cpp_extension.CUDAExtension if cuda else cpp_extension.CppExtension
    sources += sorted(glob.glob("csrc/*.cu")) if cuda else []
    ext = kind("laaf_kernels._C", sources, extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]})
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
