# The library: libshmengine.so (soname below) and libshmengine.a from the objects of alloc/,
# engine/ and proto/, with their public headers under include/shmengine/, a pkg-config file and
# a CMake package. Included from the top-level CMakeLists.txt after the three layers.
include(CMakePackageConfigHelpers)

set(ENG_PUBLIC_HEADERS ${PROJECT_SOURCE_DIR}/engine/engine.h ${PROJECT_SOURCE_DIR}/alloc/arena.h
                       ${PROJECT_SOURCE_DIR}/proto/proto.h)
# In the build tree the public headers are where they will be installed, so that programs in
# this tree (examples/) include them exactly as an installed user does: <shmengine/engine.h>.
set(ENG_BUILD_INCLUDE ${PROJECT_BINARY_DIR}/include)
foreach(h IN LISTS ENG_PUBLIC_HEADERS)
  get_filename_component(n ${h} NAME)
  configure_file(${h} ${ENG_BUILD_INCLUDE}/shmengine/${n} COPYONLY)
endforeach()

# The library's objects export only ENG_API names (tests/check-symbols.sh). Only theirs: a test
# binary with its own main() must keep default visibility (Criterion's runner finds it).
set_target_properties(eng_alloc eng_engine eng_proto PROPERTIES C_VISIBILITY_PRESET hidden)
set(ENG_LIB_OBJECTS $<TARGET_OBJECTS:eng_alloc> $<TARGET_OBJECTS:eng_engine>
                    $<TARGET_OBJECTS:eng_proto>)
# Before 1.0 the ABI may change with the minor version: soname libshmengine.so.0.MINOR.
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(ENG_SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})
else()
  set(ENG_SOVERSION ${PROJECT_VERSION_MAJOR})
endif()

add_library(shmengine SHARED ${ENG_LIB_OBJECTS})
set_target_properties(shmengine PROPERTIES VERSION ${PROJECT_VERSION} SOVERSION ${ENG_SOVERSION}
                                           EXPORT_NAME shmengine)
# ck is used through its headers only (inline atomics, ck_ring): neither library links it.
target_link_libraries(shmengine PRIVATE PkgConfig::XXHASH Threads::Threads rt)
target_link_options(shmengine PRIVATE -Wl,--no-undefined)
target_include_directories(shmengine INTERFACE $<BUILD_INTERFACE:${ENG_BUILD_INCLUDE}>
                                               $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
add_library(shmengine::shmengine ALIAS shmengine)

# The static library. Its objects were compiled with hidden visibility, but an archive still
# lets a program link against (and collide with) every global of every object: its objects are
# linked into one and every hidden symbol made local (cmake/localize.cmake), so that it too
# offers only eng_ names.
add_library(shmengine_static STATIC ${ENG_LIB_OBJECTS})
set_target_properties(shmengine_static PROPERTIES OUTPUT_NAME shmengine EXPORT_NAME static)
target_link_libraries(shmengine_static PRIVATE PkgConfig::XXHASH Threads::Threads rt)
target_include_directories(shmengine_static
  INTERFACE $<BUILD_INTERFACE:${ENG_BUILD_INCLUDE}> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
add_custom_command(TARGET shmengine_static POST_BUILD
  COMMAND ${CMAKE_COMMAND} -DARCHIVE=$<TARGET_FILE:shmengine_static> -DLD=${CMAKE_LINKER}
          -DOBJCOPY=${CMAKE_OBJCOPY} -DAR=${CMAKE_AR} -P ${PROJECT_SOURCE_DIR}/cmake/localize.cmake
  VERBATIM)
add_library(shmengine::static ALIAS shmengine_static)

# What this tree's tests, fuzzers and benchmarks link: every object with its globals intact,
# and the private headers of every layer.
add_library(eng_internal STATIC ${ENG_LIB_OBJECTS})
target_include_directories(eng_internal PUBLIC ${PROJECT_SOURCE_DIR}/alloc
  ${PROJECT_SOURCE_DIR}/engine ${PROJECT_SOURCE_DIR}/proto ${ENG_BUILD_INCLUDE})
target_link_libraries(eng_internal PUBLIC PkgConfig::CK PkgConfig::XXHASH Threads::Threads rt)

# ---- install --------------------------------------------------------------------------------
install(TARGETS shmengine shmengine_static EXPORT shmengineTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${ENG_PUBLIC_HEADERS} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/shmengine)

set(ENG_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/shmengine)
install(EXPORT shmengineTargets NAMESPACE shmengine:: DESTINATION ${ENG_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/shmengineConfig.cmake.in
  ${PROJECT_BINARY_DIR}/shmengineConfig.cmake INSTALL_DESTINATION ${ENG_CMAKE_DIR})
# Before 1.0 a minor version may break the API: only the same minor version is compatible.
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(ENG_COMPAT SameMinorVersion)
else()
  set(ENG_COMPAT SameMajorVersion)
endif()
write_basic_package_version_file(${PROJECT_BINARY_DIR}/shmengineConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY ${ENG_COMPAT})
install(FILES ${PROJECT_BINARY_DIR}/shmengineConfig.cmake
              ${PROJECT_BINARY_DIR}/shmengineConfigVersion.cmake DESTINATION ${ENG_CMAKE_DIR})

# ${pcfiledir} up to the prefix, so that the installed tree can move (cmake --install --prefix).
set(ENG_PC_PREFIX "\${pcfiledir}")
string(REPLACE "/" ";" _eng_pc_parts "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
foreach(_p IN LISTS _eng_pc_parts)
  string(APPEND ENG_PC_PREFIX "/..")
endforeach()
configure_file(${PROJECT_SOURCE_DIR}/cmake/shmengine.pc.in ${PROJECT_BINARY_DIR}/shmengine.pc
               @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/shmengine.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
