"""Result records -> tables, plots, reference rows and the regression gate."""
