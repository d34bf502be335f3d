/*
 * version.c - the library's version at run time, for callers to compare with the header's.
 */
#include "engine.h"

const char *eng_version(void)
{
        return ENG_VERSION_STRING;
}

unsigned eng_version_number(void)
{
        return ENG_VERSION_NUMBER;
}
