# CPack post-build script (CPACK_POST_BUILD_SCRIPTS): takes the postinst
# and postrm out of the library package again.
#
# CPack 3.25 writes a postinst and a postrm that run ldconfig into every
# package with a shared library under /usr/lib, and has no switch to turn
# that off. librefpage0 activates dpkg's ldconfig trigger instead
# (debian/triggers), as Debian policy 8.1.1 asks; the two scripts would
# run ldconfig a second time (lintian: maintscript-calls-ldconfig). The
# package is unpacked, the two files deleted, and the package built again
# with dpkg-deb; nothing else in it changes.
foreach(deb IN LISTS CPACK_PACKAGE_FILES)
  get_filename_component(name ${deb} NAME)
  if(NOT name MATCHES "^${CPACK_DEBIAN_LIB_PACKAGE_NAME}_.*\\.deb$")
    continue()
  endif()
  set(tree ${deb}.tree)
  file(REMOVE_RECURSE ${tree})
  execute_process(COMMAND dpkg-deb -R ${deb} ${tree} COMMAND_ERROR_IS_FATAL ANY)
  foreach(script postinst postrm)
    if(NOT EXISTS ${tree}/DEBIAN/${script})
      continue()
    endif()
    file(READ ${tree}/DEBIAN/${script} body)
    # Only what CPack wrote: a script of anything else is not ours to drop.
    string(REGEX REPLACE "[ \t\n]" "" flat "${body}")
    if(NOT flat MATCHES "^#!/bin/shset-eif\\[\"\\$1\"=\"(configure|remove)\"\\];thenldconfigfi$")
      message(FATAL_ERROR "${name}: ${script} is not CPack's ldconfig call:\n${body}")
    endif()
    file(REMOVE ${tree}/DEBIAN/${script})
  endforeach()
  execute_process(COMMAND dpkg-deb --root-owner-group -b ${tree} ${deb}
    OUTPUT_QUIET COMMAND_ERROR_IS_FATAL ANY)
  file(REMOVE_RECURSE ${tree})
endforeach()
