"""Word lists shipped with altsieve (boilerplate captions); users extend them with files of their own."""
