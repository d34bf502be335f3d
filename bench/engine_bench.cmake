# engine-bench: the benchmark program (bench/engine_bench.c and its helpers).
# Included from the top-level CMakeLists.txt (top-level scope): paths use CMAKE_SOURCE_DIR.
# docs/BENCH.md describes what it measures and writes.

set(ENG_BENCH_DIR ${CMAKE_SOURCE_DIR}/bench)

add_executable(engine-bench
  ${ENG_BENCH_DIR}/engine_bench.c
  ${ENG_BENCH_DIR}/engine_wl.c
  ${ENG_BENCH_DIR}/refs.c
  ${ENG_BENCH_DIR}/boost_wl.c
  ${ENG_BENCH_DIR}/harness.c
  ${ENG_BENCH_DIR}/hist.c
  ${ENG_BENCH_DIR}/results.c
  ${ENG_BENCH_DIR}/fmt.c
  ${ENG_BENCH_DIR}/targets.c
  ${ENG_BENCH_DIR}/report_text.c
  ${ENG_BENCH_DIR}/report_json.c
  ${ENG_BENCH_DIR}/report_html.c)
target_include_directories(engine-bench PRIVATE ${ENG_BENCH_DIR})
target_link_libraries(engine-bench PRIVATE eng_internal eng_options Threads::Threads m)
install(TARGETS engine-bench RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# Boost.Interprocess message_queue as a reference row: header-only, so only the headers are
# needed (Debian: libboost-dev). The option is ON by default and takes effect when the headers
# are found (looked for again at every configure, so installing them later is enough); set it
# OFF to leave the Boost rows out (they then report n/a).
find_path(ENG_BOOST_INCLUDE_DIR boost/interprocess/ipc/message_queue.hpp)
option(ENG_BENCH_BOOST "engine-bench: Boost.Interprocess message_queue reference rows" ON)
if(ENG_BENCH_BOOST AND NOT ENG_BOOST_INCLUDE_DIR)
  message(STATUS "engine-bench: Boost.Interprocess headers not found (apt-get install "
                 "libboost-dev): Boost reference rows OFF")
endif()
if(ENG_BENCH_BOOST AND ENG_BOOST_INCLUDE_DIR)
  enable_language(CXX)
  set(CMAKE_CXX_STANDARD 17)
  set(CMAKE_CXX_STANDARD_REQUIRED ON)
  set(CMAKE_CXX_EXTENSIONS OFF)
  add_library(eng_bench_boost STATIC ${ENG_BENCH_DIR}/boost_mq.cpp)
  target_include_directories(eng_bench_boost PRIVATE ${ENG_BENCH_DIR} ${ENG_BOOST_INCLUDE_DIR})
  # The directory's warning flags include C-only ones (-Wstrict-prototypes), which g++ rejects
  # under -Werror: keep the rest for the C++ file.
  get_target_property(_eng_bench_cxx_opts eng_bench_boost COMPILE_OPTIONS)
  if(_eng_bench_cxx_opts)
    list(REMOVE_ITEM _eng_bench_cxx_opts -Wstrict-prototypes)
    set_target_properties(eng_bench_boost PROPERTIES COMPILE_OPTIONS "${_eng_bench_cxx_opts}")
  endif()
  target_link_libraries(eng_bench_boost PUBLIC Threads::Threads rt)
  target_compile_definitions(engine-bench PRIVATE ENG_BENCH_BOOST=1)
  target_link_libraries(engine-bench PRIVATE eng_bench_boost)
  message(STATUS "engine-bench: Boost.Interprocess reference rows ON (${ENG_BOOST_INCLUDE_DIR})")
else()
  message(STATUS "engine-bench: Boost.Interprocess reference rows OFF")
endif()
