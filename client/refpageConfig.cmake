# find_package(refpage): the imported target refpage::refpage, librefpage
# and its header. It links libc only, so there is nothing else to find.
include(${CMAKE_CURRENT_LIST_DIR}/refpageTargets.cmake)
