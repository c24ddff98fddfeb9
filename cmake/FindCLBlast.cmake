# Finds CLBlast (clblast_c.h, libclblast) and defines the imported target CLBlast::clblast.
# A find module rather than CLBlast's own CMake package: Debian's links the OpenCL loader
# by a fixed path, and this one honours CMAKE_PREFIX_PATH alone (a package unpacked
# elsewhere, as tools/gpu_check.sh does). skv installs it next to
# skvConfig.cmake: skv::skv_static links CLBlast::clblast.
#
# Result variables: CLBlast_FOUND, CLBlast_INCLUDE_DIR, CLBlast_LIBRARY.
find_path(CLBlast_INCLUDE_DIR clblast_c.h)
find_library(CLBlast_LIBRARY NAMES clblast)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(CLBlast REQUIRED_VARS CLBlast_LIBRARY CLBlast_INCLUDE_DIR)
mark_as_advanced(CLBlast_INCLUDE_DIR CLBlast_LIBRARY)

if(CLBlast_FOUND AND NOT TARGET CLBlast::clblast)
  add_library(CLBlast::clblast UNKNOWN IMPORTED)
  set_target_properties(CLBlast::clblast PROPERTIES
    IMPORTED_LOCATION "${CLBlast_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${CLBlast_INCLUDE_DIR}")
endif()
