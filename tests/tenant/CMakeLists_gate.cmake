# The fork-event gate (docs/security.md ("The fork-event gate")): a client run as uid 65534
# against a private refpaged steals its fork child's uffd and the test checks
# what that uffd can and cannot do. Included from tests/CMakeLists.txt:
#   include(tenant/CMakeLists_gate.cmake)
# Needs root (it starts refpaged and drops the client); 77 = skipped.
add_executable(tenant_fork_gate ${CMAKE_CURRENT_LIST_DIR}/fork_gate.c)
# kf.h: the uffd and fd-passing helpers it shares with the kernel-fact
# programs (tests/kernel-facts/setuid_child.c checks the same facts by hand).
target_include_directories(tenant_fork_gate PRIVATE ${CMAKE_CURRENT_LIST_DIR}/../kernel-facts
  ${CMAKE_CURRENT_LIST_DIR}/../common)
target_link_libraries(tenant_fork_gate PRIVATE rp_proto Threads::Threads rp_flags)
target_compile_definitions(tenant_fork_gate PRIVATE
  RP_DAEMON_PATH="$<TARGET_FILE:refpaged>")
add_dependencies(tenant_fork_gate refpaged)
add_test(NAME tenant_fork_gate COMMAND tenant_fork_gate)
set_tests_properties(tenant_fork_gate PROPERTIES
  TIMEOUT 120 SKIP_RETURN_CODE 77 LABELS "tenant;security")
