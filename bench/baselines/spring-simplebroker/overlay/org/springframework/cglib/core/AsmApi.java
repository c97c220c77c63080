/*
 * Overlay for Debian's spring-core 4.3.30-2 (package libspring-core-java).
 *
 * Debian builds spring-core's repackaged CGLIB (org.springframework.cglib)
 * from its own cglib 3.3.0, whose AsmApi.value() returns Opcodes.ASM7
 * (0x70000). The ASM that spring-core repackages (org.springframework.asm)
 * is older and its ClassVisitor/MethodVisitor constructors accept only
 * ASM4..ASM6, so the first CGLIB proxy (every @Configuration class is one)
 * fails with IllegalArgumentException from ClassVisitor.<init>.
 *
 * This class, put ahead of spring3-core.jar on the classpath, replaces the
 * one constant: it asks for ASM6, which that ASM supports. Nothing else in
 * spring-core is changed.
 */
package org.springframework.cglib.core;

import org.springframework.asm.Opcodes;

final class AsmApi {

    static int value() {
        return Opcodes.ASM6;
    }

    private AsmApi() {
    }
}
