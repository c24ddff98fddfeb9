# Finds cJSON (cjson/cJSON.h, libcjson) and defines the imported target cJSON::cjson
# (include directory: the one holding cjson/). A find module rather than cJSON's own
# CMake package: Debian's names fixed /usr paths, and this one honours CMAKE_PREFIX_PATH
# alone (a package unpacked elsewhere, as tools/gpu_check.sh does). skv installs it next
# to skvConfig.cmake: skv::skv_static links cJSON::cjson.
#
# Result variables: cJSON_FOUND, cJSON_INCLUDE_DIR, cJSON_LIBRARY.
find_path(cJSON_INCLUDE_DIR cjson/cJSON.h)
find_library(cJSON_LIBRARY NAMES cjson)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(cJSON REQUIRED_VARS cJSON_LIBRARY cJSON_INCLUDE_DIR)
mark_as_advanced(cJSON_INCLUDE_DIR cJSON_LIBRARY)

if(cJSON_FOUND AND NOT TARGET cJSON::cjson)
  add_library(cJSON::cjson UNKNOWN IMPORTED)
  set_target_properties(cJSON::cjson PROPERTIES
    IMPORTED_LOCATION "${cJSON_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${cJSON_INCLUDE_DIR}")
endif()
