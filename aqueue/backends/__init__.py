"""Result backend drivers, one module each, imported only when their URL scheme is used."""
