# write-pc.cmake - writes livemig.pc from livemig.pc.in at install time
# (cmake/install.cmake includes it into cmake_install.cmake), where
# CMAKE_INSTALL_PREFIX is the prefix being installed to, DESTDIR excluded.
set(LM_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
foreach(kind LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${LM_PC_${kind}_CFG}")
    set(LM_PC_${kind} "${LM_PC_${kind}_CFG}")
  else()
    set(LM_PC_${kind} "\${prefix}/${LM_PC_${kind}_CFG}")
  endif()
endforeach()
configure_file("${LM_PC_IN}" "${LM_PC_OUT}" @ONLY)
