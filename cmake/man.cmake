# Man pages (section 1) of the installed programs, made by help2man from each program's --help
# and --version (Debian: help2man). Without help2man the build says so and installs none.
find_program(HELP2MAN help2man)
set(ENG_MAN_PROGRAMS
  "engine-server|serve streams and receive files over a shared-memory segment"
  "engine-client|send files to an engine-server over shared memory"
  "engine-bridge|carry engine streams and files between two hosts over TCP"
  "engine-stat|show the server, clients, streams, arena and counters of an engine segment"
  "engine-bench|measure the shared-memory engine against its baseline and OS peers"
  "arena-bench|measure the lock-free and the mutex arena allocators")
if(HELP2MAN)
  set(_eng_pages)
  foreach(entry IN LISTS ENG_MAN_PROGRAMS)
    string(REPLACE "|" ";" entry "${entry}")
    list(GET entry 0 prog)
    list(GET entry 1 what)
    if(NOT TARGET ${prog})
      continue() # engine-bridge without NNG
    endif()
    set(page ${PROJECT_BINARY_DIR}/man/${prog}.1)
    add_custom_command(OUTPUT ${page}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${PROJECT_BINARY_DIR}/man
      COMMAND ${HELP2MAN} --no-info --section=1 --name=${what} --output=${page}
              $<TARGET_FILE:${prog}>
      DEPENDS ${prog} VERBATIM)
    list(APPEND _eng_pages ${page})
  endforeach()
  add_custom_target(man ALL DEPENDS ${_eng_pages})
  install(FILES ${_eng_pages} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
else()
  message(WARNING "help2man not found: no man pages (Debian: apt-get install help2man)")
endif()
