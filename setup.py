"""Build script.

The pure-Python package needs nothing compiled. The C++ extension in ``csrc/``
is built on first use (``laaf_kernels/ops/extension.py``), or ahead of time with

    LAAF_BUILD_EXT=1 pip install --no-build-isolation .

(``--no-build-isolation``: the build compiles against the installed torch.)
"""
import glob
import importlib.util
import os

from setuptools import setup


def _cpu_flags():
    """The same CPU flags as the JIT build (read from laaf_kernels/ops/extension.py)."""
    spec = importlib.util.spec_from_file_location("laaf_extension", "laaf_kernels/ops/extension.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._cpu_flags()


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
    ext = kind("laaf_kernels._C", sources, include_dirs=[os.path.abspath("csrc")],
               extra_compile_args={"cxx": ["-O3", *_cpu_flags()], "nvcc": ["-O3"]})
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
