# install.cmake - what `cmake --install` (and `make install`) puts where:
#   bin/livemig                     the CLI (liblivemig linked in statically)
#   include/livemig.h               the one public header
#   lib/liblivemig.a                the static library
#   lib/liblivemig.so.M.m.p, .so.M (soname), .so (the link-time name)
#   lib/pkgconfig/livemig.pc        for pkg-config --cflags --libs livemig
# under CMAKE_INSTALL_PREFIX (default /usr/local; `cmake --install --prefix`
# overrides it) and DESTDIR (staging, as for a package).  lib/ is
# GNUInstallDirs' CMAKE_INSTALL_LIBDIR (lib/<multiarch> for prefix /usr).

include(GNUInstallDirs)

install(TARGETS livemig RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS livemig_lib ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
if(LM_SHARED)
  install(TARGETS livemig_shared LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()
install(FILES ${CMAKE_SOURCE_DIR}/include/livemig.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

# livemig.pc is written at install time, not at configure time, so that it
# names the prefix actually installed to (`cmake --install --prefix P`
# changes CMAKE_INSTALL_PREFIX only then).  Requires.private names the
# pkg-config modules the static library was built against.
set(LM_PC_REQUIRES "jansson libzstd zlib liblz4 gnutls")
install(CODE "
  set(LM_PC_IN \"${CMAKE_SOURCE_DIR}/cmake/livemig.pc.in\")
  set(LM_PC_OUT \"${CMAKE_BINARY_DIR}/livemig.pc\")
  set(LM_PC_LIBDIR_CFG \"${CMAKE_INSTALL_LIBDIR}\")
  set(LM_PC_INCLUDEDIR_CFG \"${CMAKE_INSTALL_INCLUDEDIR}\")
  set(LM_PC_REQUIRES \"${LM_PC_REQUIRES}\")
  set(PROJECT_VERSION \"${PROJECT_VERSION}\")
  include(\"${CMAKE_SOURCE_DIR}/cmake/write-pc.cmake\")
")
install(FILES ${CMAKE_BINARY_DIR}/livemig.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
